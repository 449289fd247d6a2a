"""The W&B logger: the one place where a training run talks to wandb."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb

from trainers.engine import EPOCH_AXIS, STEP_AXIS, Callback, Engine, is_rank_zero
from tracking.runs import init_run


class WandbLogger(Callback):
    """Starts a W&B run at fit start, logs every ``on_log`` and finishes the run with an exit code.

    Each metric is bound to the x-axis it is first logged against (``trainer/step`` or
    ``epoch``) through ``define_metric``, so no step ever goes backwards and the dashboard
    plots every family against its own axis. ``monitor`` = ``("val/acc", "max")`` puts the best
    value of the metric a sweep optimises in the run summary.

    Step metrics are sent every ``log_every`` steps (epoch metrics, tables and images always):
    each ``run.log`` is a record W&B's service process must handle, and on a small CPU machine
    that process competes with training for the same cores.

    Only rank 0 logs; on other ranks every hook is a no-op.
    """

    def __init__(
        self,
        *,
        project: str,
        mode: str,
        out_dir: str | Path,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] = (),
        monitor: tuple[str, str] | None = None,
        log_every: int = 10,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.project = project
        self.mode = mode
        self.out_dir = Path(out_dir)
        self.name = name
        self.group = group
        self.job_type = job_type
        self.tags = list(tags)
        self.monitor = monitor
        self.log_every = log_every
        self.run: Any = None
        # The local run folder: what `wandb sync` and `wandb leet inspect` take.
        self.run_dir: Path | None = None
        self._axis_of: dict[str, str] = {}

    def on_fit_start(self, trainer: Engine) -> None:
        if not is_rank_zero():
            return
        self.run = init_run(
            project=self.project,
            mode=self.mode,
            out_dir=self.out_dir,
            config=trainer.config,
            name=self.name,
            group=self.group,
            job_type=self.job_type or trainer.name,
            tags=self.tags,
        )
        self.run_dir = Path(self.run.dir).parent
        for axis in (STEP_AXIS, EPOCH_AXIS):
            self.run.define_metric(axis, hidden=True)
        if self.monitor:
            key, goal = self.monitor
            self._bind(key, EPOCH_AXIS, summary=goal)

    def _bind(self, key: str, axis: str, summary: str | None = None) -> None:
        kwargs = {"summary": summary} if summary else {}
        self.run.define_metric(key, step_metric=axis, **kwargs)
        self._axis_of[key] = axis

    def on_log(self, trainer: Engine, metrics: Mapping[str, Any], axis: str) -> None:
        if self.run is None or (axis == STEP_AXIS and trainer.global_step % self.log_every):
            return
        for key in metrics:
            if key not in self._axis_of:
                self._bind(key, axis)
        self.run.log({**metrics, axis: trainer.axis_value(axis)})

    def on_checkpoint_saved(self, trainer: Engine, path: str, aliases: Sequence[str]) -> None:
        if self.run is None:
            return
        artifact = wandb.Artifact(
            f"{trainer.name}-{self.run.id}",
            type="model",
            metadata={"epoch": trainer.epoch + 1, "step": trainer.global_step, **{k: v for k, v in trainer.summary.items() if isinstance(v, (int, float))}},
        )
        artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases))

    def on_fit_end(self, trainer: Engine) -> None:
        if self.run is None:
            return
        # The monitored metric keeps the best value define_metric collected, not the last one.
        best = self.monitor[0] if self.monitor else None
        for key, value in trainer.summary.items():
            if key != best:
                self.run.summary[key] = value
        self._finish(0)

    def on_exception(self, trainer: Engine, exception: BaseException) -> None:
        if self.run is None:
            return
        self.run.summary["error"] = f"{type(exception).__name__}: {exception}"
        self._finish(130 if isinstance(exception, KeyboardInterrupt) else 1)

    def _finish(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)
        self.run = None
