"""The W&B logger, where a training run talks to wandb, and the dataset artifact it trained on."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wandb
from wandb import env as wandb_env

from dlhw.callbacks import DEFAULT_PROJECT
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback, Session, Stopped, is_rank_zero

JOURNAL_SECONDS = 60.0  # W&B's service writes its file every 15 s: what a kill -9 can lose, with room to spare


def init_run(*, project: str | None, mode: str, out_dir: str | Path, config: Mapping[str, Any], name: str | None = None,
             group: str | None = None, job_type: str | None = None, tags: Sequence[str] = (),
             entity: str | None = None, run_id: str | None = None, resume: bool = False) -> Any:
    """Start a run under ``out_dir/wandb``; an online start that fails is retried offline, said in one line."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # W&B stages uploads and caches artifacts under the home folder: keep them under --out unless the user says.
    os.environ.setdefault("WANDB_DATA_DIR", str(out_dir / "wandb-data"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(out_dir / "wandb-cache"))
    kwargs: dict[str, Any] = dict(
        project=project or os.environ.get(wandb_env.PROJECT) or DEFAULT_PROJECT, entity=entity, dir=str(out_dir),
        config=dict(config), name=name, group=group, job_type=os.environ.get(wandb_env.JOB_TYPE) or job_type,
        tags=None if os.environ.get(wandb_env.TAGS) else list(tags) or None, reinit="finish_previous", id=run_id)
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=30),
                              resume="must" if resume else None, **kwargs)
        except Exception as exc:  # wandb raises several types for "no server"; all mean: go offline.
            print(f"W&B online start failed ({type(exc).__name__}: {exc}); logging offline instead, "
                  f"upload later with `wandb sync {out_dir / 'wandb'}`", file=sys.stderr)
    return wandb.init(mode=mode if mode != "online" else "offline", resume="allow" if resume else None, **kwargs)


class WandbLogger(Callback):
    """A W&B run from fit start to end: every ``on_log`` (step metrics as means), ``monitor``'s best in the summary."""

    def __init__(self, *, project: str | None, mode: str, out_dir: str | Path, name: str | None = None,
                 group: str | None = None, job_type: str | None = None, tags: Sequence[str] = (),
                 monitor: tuple[str, str] | None = None, log_every: int = 10, entity: str | None = None) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        # init_run's arguments; the trainer's config and name join at fit start.
        self._init: dict[str, Any] = dict(project=project, entity=entity, mode=mode, out_dir=Path(out_dir), name=name,
                                          group=group, job_type=job_type, tags=list(tags))
        self.monitor, self.log_every = monitor, log_every
        self._key = monitor[0] if monitor else None
        self.run: Any = None
        self.run_dir: Path | None = None  # for `wandb sync` and `wandb leet inspect`
        self._bound: set[str] = set()  # keys given their axis
        self._window: dict[str, list[Any]] = {}  # each key's values in the open step window
        self._window_step = 0
        self._last: dict[str, Any] = {}  # each key's last value: the summary's final value
        self._best: float | None = None
        self.run_id: str | None = None  # the run to continue, from a checkpoint
        self._sent: dict[str, int] = {}  # each key's last axis value sent
        # (time, axis, value, metrics) sent in the last JOURNAL_SECONDS: a checkpoint carries them to be sent again.
        self._journal: deque[tuple[float, str, int, dict[str, float]]] = deque()
        self._journaled: list[tuple] = []  # the checkpoint's journal
        self._replay: list[tuple] = []  # what of it the run's files lack
        self._failures = 0
        # Checkpoint artifacts are built on a thread, logged in order.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb-artifact")
        self._artifacts: list[tuple[Future, list[str]]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run.id if self.run is not None else self.run_id, "sent": dict(self._sent),
                "journal": [[axis, value, metrics] for _, axis, value, metrics in self._journal],
                # A resumed process that logs little still ends with the whole run's final numbers.
                "last": {k: v for k, v in self._last.items() if _is_number(v)}, "best": self._best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self._sent = dict(state.get("sent") or {})
        self._journaled = [tuple(entry) for entry in state.get("journal") or []]
        self._last.update(state.get("last") or {})
        self._best = state.get("best")

    def already_logged(self, sent: Mapping[str, int]) -> None:
        """The W&B run's files hold each ``key`` up to axis value ``sent[key]``: the journal beyond it is sent again."""
        self._replay = [(axis, value, lost) for axis, value, metrics in self._journaled
                        if (lost := {k: v for k, v in metrics.items() if sent.get(k, -1) < value})]
        for key, value in sent.items():
            self._sent[key] = max(self._sent.get(key, value), value)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; when it raises, warn once and carry on: W&B never stops training."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any failure of the W&B client or its service process
            self._failures += 1
            if self._failures == 1:
                print(f"warning: W&B {what} failed ({type(exc).__name__}: {exc}); training and checkpoints go on, "
                      f"further W&B errors of this run are not shown", file=sys.stderr)
            return None

    def on_fit_start(self, trainer: Session) -> None:
        if not is_rank_zero():
            return
        self._init.update(config=trainer.config, job_type=self._init["job_type"] or trainer.name)
        run_id = os.environ.get(wandb_env.RUN_ID) or self.run_id
        self.run = self._call("init", init_run, **self._init, run_id=run_id, resume=self.run_id is not None)
        if self.run is None:
            return
        self.run_dir = Path(self.run.dir).parent
        for axis in (STEP_AXIS, EPOCH_AXIS):
            self._call("define_metric", self.run.define_metric, axis, hidden=True)
        if self._key:
            self._bind(self._key, EPOCH_AXIS)
        for axis, value, lost in self._replay:
            for key in lost.keys() - self._bound:
                self._bind(key, axis)
            self._call("log", self.run.log, {**lost, axis: value})
            # Journaled again: W&B may not have written them when this process is killed in turn.
            self._journal.append((time.monotonic(), axis, value, lost))
        self._replay = []

    def _bind(self, key: str, axis: str) -> None:
        self._call("define_metric", self.run.define_metric, key, step_metric=axis)
        self._bound.add(key)

    def on_log(self, trainer: Session, metrics: Mapping[str, Any], axis: str) -> None:
        if self.run is None:
            return
        for key in metrics:
            if key not in self._bound:
                self._bind(key, axis)
        if axis == STEP_AXIS:  # into the window, sent as means every log_every steps: a run.log costs CPU
            for key, value in metrics.items():
                if _is_number(value):
                    self._window.setdefault(key, []).append(value)
                else:
                    self._window[key] = [value]
            self._last.update(metrics)
            self._window_step = trainer.global_step
            if trainer.global_step % self.log_every == 0:
                self._flush()
            return
        self._flush()
        self._log_artifacts(wait=False)
        if trainer.epochs == 1:
            # The monitored metric stays in history: sweeps and their early stopping read it there.
            one_off = {k: v for k, v in metrics.items() if _is_number(v) and k != self._key}
            self._call("summary", self.run.summary.update, one_off)
            metrics = {k: v for k, v in metrics.items() if k not in one_off}
            if not metrics:
                return
        self._send(metrics, axis, trainer.axis_value(axis))

    def _send(self, metrics: Mapping[str, Any], axis: str, value: int) -> None:
        fresh = {k: v for k, v in metrics.items() if self._sent.get(k, -1) < value}
        if fresh:
            self._sent.update((k, value) for k in fresh)
            self._call("log", self.run.log, {**fresh, axis: value})
            if _is_number(new := fresh.get(self._key)):
                self._best = new if self._best is None else (max if self.monitor[1] == "max" else min)(self._best, new)
                if self._best != new:  # a new best is already the summary's value, as the last one logged
                    self._call("summary", self.run.summary.update, {self._key: self._best})
            now = time.monotonic()
            numbers = {k: v for k, v in fresh.items() if _is_number(v)}
            if numbers:
                self._journal.append((now, axis, value, numbers))
                if axis != STEP_AXIS:  # a step key's last value is not its window's mean
                    self._last.update(numbers)
            while self._journal and now - self._journal[0][0] > JOURNAL_SECONDS:
                self._journal.popleft()

    def _flush(self) -> None:
        if not self._window:
            return
        record = {k: v[0] if len(v) == 1 else sum(v) / len(v) for k, v in self._window.items()}
        self._window = {}
        self._send(record, STEP_AXIS, self._window_step)

    def on_checkpoint_saved(self, trainer: Session, path: str, aliases: Sequence[str],
                            metadata: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        # Opened now: a newer checkpoint that replaces the name later (a new file) never changes what is sent.
        source = self._call("artifact", open, path, "rb")
        if source is not None:
            built = self._builder.submit(_model_artifact, f"{trainer.name}-{self.run.id}", source, metadata)
            self._artifacts.append((built, list(aliases)))
        self._log_artifacts(wait=False)

    def _log_artifacts(self, *, wait: bool) -> None:
        while self._artifacts and (wait or self._artifacts[0][0].done()):
            built, aliases = self._artifacts.pop(0)
            artifact = self._call("artifact", built.result)
            if artifact is not None:
                self._call("artifact", self.run.log_artifact, artifact, aliases=aliases)

    def on_fit_end(self, trainer: Session) -> None:
        if self.run is None:
            return
        self._flush()
        self._log_artifacts(wait=True)
        # The monitored metric keeps its best value, not the last one.
        final = {k: v for k, v in self._last.items() if _is_number(v) and k != self._key}
        final.update((k, v) for k, v in trainer.summary.items() if k != self._key)
        if self._best is not None:
            final[self._key] = self._best
        self._call("summary", self.run.summary.update, final)
        self._finish(trainer.exit_code, final)

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        if self.run is None:
            return
        self._flush()
        self._log_artifacts(wait=True)
        if isinstance(exception, Stopped):
            # Preempted, not failed: the scheduler (or a sweep) may start it again from its checkpoint.
            self._call("mark_preempting", self.run.mark_preempting)
            self._finish(exception.exit_code)
            return
        self._call("summary", self.run.summary.update, {"error": f"{type(exception).__name__}: {exception}"})
        self._finish(130 if isinstance(exception, KeyboardInterrupt) else 1)

    def _finish(self, exit_code: int, summary: Mapping[str, Any] | None = None) -> None:
        run, self.run, self.run_id = self.run, None, self.run.id
        failures = self._failures
        self._call("finish", run.finish, exit_code=exit_code)
        if self._failures == failures:
            return
        # The service process is gone: a fresh one continues the run to record its end, so it never stays "running".
        self._call("teardown", wandb.teardown)
        run = self._call("init", init_run, **self._init, run_id=self.run_id, resume=True)
        if run is not None:
            self._call("summary", run.summary.update, dict(summary or {}))
            self._call("finish", run.finish, exit_code=exit_code)


def _model_artifact(name: str, source: Any, metadata: Mapping[str, Any]) -> wandb.Artifact:
    with source:
        artifact = wandb.Artifact(name, type="model", metadata=dict(metadata))
        with artifact.new_file(Path(source.name).name, mode="wb") as copy:
            shutil.copyfileobj(source, copy)
    return artifact


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class DatasetArtifact(Callback):
    """At fit start, the dataset artifact ``name`` of ``path`` as ``file://`` references; place it after the logger."""

    reports_only = True

    def __init__(self, name: str, path: str | Path) -> None:
        self.name, self.path = name, Path(path).resolve()

    def on_fit_start(self, trainer: Session) -> None:
        run = wandb.run
        if run is None or not is_rank_zero() or not self.path.exists():
            return
        artifact = wandb.Artifact(self.name, type="dataset", metadata={"path": str(self.path)})
        artifact.add_reference(self.path.as_uri(), name=self.path.name if self.path.is_file() else None)
        (run.log_artifact if run.offline else run.use_artifact)(artifact)  # offline, W&B cannot mark it used
