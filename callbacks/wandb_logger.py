"""The W&B logger: the one place where a training run talks to wandb."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb
from wandb import env as wandb_env

from dlhw.callbacks.runs import init_run
from dlhw.core.events import Callback, EPOCH_AXIS, Loop, STEP_AXIS, is_rank_zero
from dlhw.core.session import Stopped

# How far back the journal of sent numbers reaches: W&B's service writes its file every 15 s
# (``x_transaction_log_flush_interval``), with room to spare.
JOURNAL_SECONDS = 60.0


class WandbLogger(Callback):
    """Starts a W&B run at fit start, logs every ``on_log`` and finishes the run with an exit code.

    Each metric is bound to the x-axis it is first logged against (``trainer/step`` or
    ``epoch``) through ``define_metric``, so no step ever goes backwards and the dashboard
    plots every family against its own axis. ``monitor`` = ``("val/acc", "max")`` puts the best
    value of the metric a sweep optimises in the run summary.

    Step metrics are thinned, never dropped: everything reported in a window of ``log_every``
    steps goes out as one ``run.log`` record at the window's end (numbers as their mean over the
    window, anything else as its last value), and an open window is always sent before an epoch's
    metrics and when the fit ends, so the last step of a fit always reaches W&B. Each ``run.log``
    is a record W&B's service process must handle, and on a small CPU machine that process
    competes with training for the same cores; the run summary gets every key's last reported
    value, whatever the window did to its curve.

    A fit of a single epoch has no epoch curves: its epoch-axis numbers go to the run summary
    only (tables, pictures and the monitored metric still to history), so the workspace does not
    open on one-point charts.

    A resumed fit continues the same W&B run: the run id is part of :meth:`state_dict`, so a
    checkpoint carries it (``WANDB_RUN_ID`` wins when set), and the run is resumed with
    ``resume="must"`` online, ``"allow"`` offline. History never repeats or goes back: each key
    remembers the last axis value it was sent at, and a resumed fit drops what it recomputes up
    to there; :meth:`already_logged` adds what the earlier process sent after its last checkpoint
    (read from its run files), so a ``kill -9`` leaves no duplicate either.

    W&B trouble never stops training: when a W&B call raises (the service process gone, the disk
    full), one warning goes to stderr and training and checkpointing go on without it. A fit
    ended by a stop signal (:class:`core.session.Stopped`) marks the run preempting and finishes
    it with the signal's exit code (130, 143).

    Only rank 0 logs; on other ranks every hook is a no-op.
    """

    def __init__(
        self,
        *,
        project: str | None,
        mode: str,
        out_dir: str | Path,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] = (),
        monitor: tuple[str, str] | None = None,
        log_every: int = 10,
        entity: str | None = None,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.project = project
        self.entity = entity
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
        # The open step window: key -> [sum, count] for numbers, key -> value for anything else.
        self._window: dict[str, Any] = {}
        self._window_step = 0
        # Each number's last reported value (step and epoch keys): the run summary's final value.
        self._last: dict[str, Any] = {}
        # The monitored metric's best value: the summary holds it as a plain number under the metric's
        # own name, what sweeps and best_run() sort on (define_metric(summary=...) writes {"max": x}).
        self._best: float | None = None
        # The run to continue (from a checkpoint), and each key's last axis value sent to W&B.
        self.run_id: str | None = None
        self._resuming = False
        self._sent: dict[str, int] = {}
        # The numbers sent in the last JOURNAL_SECONDS (time, axis, value, metrics): W&B's service
        # writes its file every few seconds, so a kill -9 loses what it had not written yet; a
        # checkpoint carries them, to be sent again (see already_logged).
        self._journal: deque[tuple[float, str, int, dict[str, float]]] = deque()
        self._replay: list[tuple] = []
        self._persisted: dict[str, int] | None = None
        self._warned = False
        self._failures = 0
        self._init: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run.id if self.run is not None else self.run_id, "sent": dict(self._sent),
                "journal": [[axis, value, metrics] for _, axis, value, metrics in self._journal],
                # Every number's last value: a resumed process that logs little (only the test left)
                # still ends with the whole run's final numbers in its summary.
                "last": {k: v for k, v in self._last.items() if _is_number(v)}, "best": self._best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self._resuming = self.run_id is not None
        self._sent = dict(state.get("sent") or {})
        self._replay = [tuple(entry) for entry in state.get("journal") or []]
        self._last.update(state.get("last") or {})
        self._best = state.get("best")

    def already_logged(self, sent: Mapping[str, int]) -> None:
        """What the W&B run's files hold: each ``key`` up to axis value ``sent[key]``. Records at or
        below it are dropped (what an earlier process logged after its checkpoint), and the numbers
        the checkpoint's journal has beyond it are sent again when the run starts (what W&B had
        not yet written to its file when that process was killed)."""
        self._persisted = dict(sent)
        for key, value in sent.items():
            self._sent[key] = max(self._sent.get(key, value), value)

    def _replay_journal(self) -> None:
        if self._persisted is None:
            return
        for axis, value, metrics in self._replay:
            lost = {k: v for k, v in metrics.items() if self._persisted.get(k, -1) < value}
            if lost:
                for key in lost.keys() - self._axis_of.keys():
                    self._bind(key, axis)
                self._call("log", self.run.log, {**lost, axis: value})
                # Journaled again: W&B may not have written them when this process is killed in turn.
                self._journal.append((time.monotonic(), axis, value, lost))
        self._replay = []

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; when it raises, warn once and carry on: W&B never stops training."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any failure of the W&B client or its service process
            self._failures += 1
            if not self._warned:
                self._warned = True
                print(f"warning: W&B {what} failed ({type(exc).__name__}: {exc}); training and checkpoints go on, "
                      f"further W&B errors of this run are not shown", file=sys.stderr)
            return None

    def on_fit_start(self, trainer: Loop) -> None:
        if not is_rank_zero():
            return
        self._init = dict(project=self.project, entity=self.entity, mode=self.mode, out_dir=self.out_dir,
                          config=trainer.config, name=self.name, group=self.group,
                          job_type=self.job_type or trainer.name, tags=self.tags)
        run_id = os.environ.get(wandb_env.RUN_ID) or self.run_id
        self.run = self._call("init", init_run, **self._init, run_id=run_id, resume=self._resuming)
        if self.run is None:
            return
        self.run_dir = Path(self.run.dir).parent
        for axis in (STEP_AXIS, EPOCH_AXIS):
            self._call("define_metric", self.run.define_metric, axis, hidden=True)
        if self.monitor:
            self._bind(self.monitor[0], EPOCH_AXIS)
        self._replay_journal()

    def _bind(self, key: str, axis: str) -> None:
        self._call("define_metric", self.run.define_metric, key, step_metric=axis)
        self._axis_of[key] = axis

    def on_log(self, trainer: Loop, metrics: Mapping[str, Any], axis: str) -> None:
        if self.run is None:
            return
        for key in metrics:
            if key not in self._axis_of:
                self._bind(key, axis)
        if axis == STEP_AXIS:
            self._collect(metrics, trainer.global_step)
            if trainer.global_step % self.log_every == 0:
                self._flush()
            return
        self._flush()
        if trainer.epochs == 1:
            # The monitored metric stays in history: sweeps and their early stopping read it there.
            monitored = self.monitor[0] if self.monitor else None
            one_off = {k: v for k, v in metrics.items() if _is_number(v) and k != monitored}
            self._call("summary", self.run.summary.update, one_off)
            metrics = {k: v for k, v in metrics.items() if k not in one_off}
            if not metrics:
                return
        self._send(metrics, axis, trainer.axis_value(axis))

    def _send(self, metrics: Mapping[str, Any], axis: str, value: int) -> None:
        """``run.log`` the keys of ``metrics`` not yet sent at ``value`` or later on ``axis``."""
        fresh = {k: v for k, v in metrics.items() if self._sent.get(k, -1) < value}
        if fresh:
            self._sent.update((k, value) for k in fresh)
            self._call("log", self.run.log, {**fresh, axis: value})
            key, goal = self.monitor or (None, None)
            if _is_number(fresh.get(key)):
                best = fresh[key] if self._best is None else (max if goal == "max" else min)(self._best, fresh[key])
                self._best = best
                self._call("summary", self.run.summary.update, {key: best})
            now = time.monotonic()
            numbers = {k: v for k, v in fresh.items() if _is_number(v)}
            if numbers:
                self._journal.append((now, axis, value, numbers))
                if axis != STEP_AXIS:  # step keys' last values come from _collect (windows send means)
                    self._last.update(numbers)
            while self._journal and now - self._journal[0][0] > JOURNAL_SECONDS:
                self._journal.popleft()

    def _collect(self, metrics: Mapping[str, Any], step: int) -> None:
        window = self._window
        for key, value in metrics.items():
            if _is_number(value):
                acc = window.get(key)
                if acc is None:
                    window[key] = [value, 1]
                else:
                    acc[0] += value
                    acc[1] += 1
            else:
                window[key] = value
        self._last.update(metrics)
        self._window_step = step

    def _flush(self) -> None:
        """Send the open step window as one record against the last step it saw."""
        if not self._window:
            return
        record = {k: (v[0] / v[1] if v[1] > 1 else v[0]) if isinstance(v, list) else v for k, v in self._window.items()}
        self._window = {}
        self._send(record, STEP_AXIS, self._window_step)

    def on_checkpoint_saved(self, trainer: Loop, path: str, aliases: Sequence[str],
                            metadata: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        self._call("artifact", self._log_artifact, trainer.name, path, aliases, metadata)

    def _log_artifact(self, name: str, path: str, aliases: Sequence[str], metadata: Mapping[str, Any]) -> None:
        artifact = wandb.Artifact(f"{name}-{self.run.id}", type="model", metadata=dict(metadata))
        artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases))

    def on_fit_end(self, trainer: Loop) -> None:
        if self.run is None:
            return
        self._flush()
        # The monitored metric keeps its best value, not the last one.
        best = self.monitor[0] if self.monitor else None
        final = {k: v for k, v in self._last.items() if _is_number(v) and k != best}
        final.update((k, v) for k, v in trainer.summary.items() if k != best)
        if self._best is not None:
            final[best] = self._best
        self._call("summary", self.run.summary.update, final)
        self._finish(trainer.exit_code, final)

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        if self.run is None:
            return
        self._flush()
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
        # The service process is gone, so the run's record has no end: a fresh service continues the
        # same run just to record its summary and exit code, so that it never stays "running".
        self._call("teardown", wandb.teardown)
        run = self._call("init", init_run, **self._init, run_id=self.run_id, resume=True)
        if run is not None:
            self._call("summary", run.summary.update, dict(summary or {}))
            self._call("finish", run.finish, exit_code=exit_code)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
