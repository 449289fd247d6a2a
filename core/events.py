"""A run's events and lifecycle: the callbacks' hooks, their x-axes, the rank that owns logging, and the Session
that fires them (``trainers.engine.Engine`` is a session with a training loop). Below trainers and callbacks, so
neither imports the other."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

STEP_AXIS = "trainer/step"
EPOCH_AXIS = "epoch"


class Callback:
    """Base class for plug-ins; every hook is a no-op. A ``reports_only`` callback (pictures and tables for
    W&B) that raises is warned about once and skipped: a reporting failure must never stop training."""

    reports_only = False

    def on_fit_start(self, trainer: Session) -> None:
        """Called once before the first epoch."""

    def on_epoch_start(self, trainer: Session, epoch: int) -> None:
        """Called at the start of every training epoch."""

    def on_batch_end(self, trainer: Session, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        """Called after every training step with what the step produced."""

    def on_validation_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after evaluation with the epoch's metrics."""

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called when an epoch (training and evaluation) is complete."""

    def on_test_end(self, trainer: Session, metrics: Mapping[str, float]) -> None:
        """Called after the last epoch with the metrics of :meth:`Engine.test`, when it has any."""

    def on_fit_end(self, trainer: Session) -> None:
        """Called once after the last epoch when nothing went wrong."""

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        """Called when the loop raises; the exception is re-raised afterwards."""

    def on_log(self, trainer: Session, metrics: Mapping[str, Any], axis: str) -> None:
        """Called when the trainer reports metrics against the x-axis ``axis``."""

    def on_checkpoint_saved(self, trainer: Session, path: str, aliases: Sequence[str],
                            metadata: Mapping[str, Any]) -> None:
        """Called once a checkpoint file is on disk; ``metadata``: its ``epoch``, ``step`` and that epoch's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def is_rank_zero() -> bool:
    """True in the process that owns logging and checkpoints (the only one without torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


# Ctrl-C, and what schedulers and preemptible machines send before they kill a process.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The sweep runner's metric and a file it reads for early stopping (W&B buffers its own files).
METRIC_ENV, METRIC_FILE_ENV = "DLHW_SWEEP_METRIC", "DLHW_SWEEP_METRIC_FILE"


class Stopped(BaseException):
    """A stop asked for by SIGINT or SIGTERM, raised between two steps where the state can be checkpointed (not an
    ``Exception``, which would swallow it); ``checkpoint`` is set by whoever wrote the one to resume from."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint: str | None = None
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def end_by_signal(signum: int) -> None:
    """End this process as killed by ``signum``: ``wandb agent`` counts it a stop, an exit status > 0 a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class Session:
    """Fires the events of one run to its callbacks and holds what they read (each hook's ``trainer``): ``name`` is
    the W&B job type, ``config`` what W&B records, ``epochs`` and ``steps_per_epoch`` (None: unknown) size progress."""

    def __init__(self, callbacks: Iterable[Callback] = (), *, name: str = "experiment",
                 config: Mapping[str, Any] | None = None, epochs: int = 1, steps_per_epoch: int | None = None) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.callbacks: list[Callback] = list(callbacks)
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = self.global_step = 0
        self.batch_in_epoch = 0  # where a checkpoint written mid-epoch resumes
        self.should_stop = False
        self.stop_signal: int | None = None  # acted on at the next step's end
        self.summary: dict[str, Any] = {}
        self.exit_code = 0  # 1 when the self-check (check/passed) failed: set before on_fit_end, so W&B records it
        self.results: dict[str, Any] = {}  # what an experiment without a trainer hands its panels
        self._report_failures: set[int] = set()  # reporting callbacks already warned about

    def fire(self, event: str, **kwargs: Any) -> None:
        """Call hook ``event`` on every callback; a ``reports_only`` one that raises is warned about once."""
        for cb in self.callbacks:
            try:
                getattr(cb, event)(self, **kwargs)
            except Exception as exc:
                if not cb.reports_only:
                    raise
                if id(cb) not in self._report_failures:
                    self._report_failures.add(id(cb))
                    print(f"warning: {type(cb).__name__}.{event} failed ({type(exc).__name__}: {exc}); "
                          f"training goes on without it", file=sys.stderr)

    def log(self, metrics: Mapping[str, Any], *, axis: str = STEP_AXIS) -> None:
        """Report metrics against ``axis``; the sweep's metric on the epoch axis also to the sweep runner's file."""
        if metrics:
            self.fire("on_log", metrics=metrics, axis=axis)
            name, path = os.environ.get(METRIC_ENV), os.environ.get(METRIC_FILE_ENV)
            if axis == EPOCH_AXIS and name in metrics and path and is_rank_zero():
                with open(path, "a") as fh:  # one write of one line: a reader sees it whole or not at all
                    fh.write(json.dumps([self.axis_value(axis), float(metrics[name])]) + "\n")

    def axis_value(self, axis: str) -> int:
        """Steps taken, or epochs completed (1-based)."""
        return self.epoch + 1 if axis == EPOCH_AXIS else self.global_step

    def step_end(self, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        self.global_step += 1
        self.batch_in_epoch += 1
        self.fire("on_batch_end", batch_idx=batch_idx, outputs=outputs)
        self.check_stop()

    def check_stop(self) -> None:
        """Raise :class:`Stopped` when a stop signal arrived; called where the state is whole."""
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)

    @contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """While the body runs, SIGINT and SIGTERM ask for a clean stop at the next step's end; a second Ctrl-C
        aborts at once. Only the main thread can install handlers: elsewhere this does nothing."""
        def on_signal(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.stop_signal is None and is_rank_zero():  # under torchrun every process hears it
                print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                      f"(Ctrl-C again to abort at once)", file=sys.stderr)
            self.stop_signal = signum

        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} if main else {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """``on_validation_end``, the metrics logged on the epoch axis and kept in the summary, ``on_epoch_end``."""
        self.fire("on_validation_end", epoch=epoch, metrics=metrics)
        self.log({**metrics}, axis=EPOCH_AXIS)
        self.summary.update(metrics)
        self.fire("on_epoch_end", epoch=epoch, metrics=metrics)

    def test_end(self, metrics: Mapping[str, float]) -> None:
        """Log the final metrics against the last epoch (the axis never goes back) and fire ``on_test_end``."""
        if metrics:
            self.log({**metrics}, axis=EPOCH_AXIS)
            self.summary.update(metrics)
            self.fire("on_test_end", metrics=metrics)

    def find_callback(self, kind: type) -> Any:
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    @contextmanager
    def running(self) -> Iterator[Session]:
        """``on_fit_start``, then ``on_fit_end`` (``exit_code``, ``summary["fit_seconds"]`` set) or ``on_exception``."""
        started = time.perf_counter()
        try:
            self.fire("on_fit_start")
            yield self
            self.summary.setdefault("fit_seconds", round(time.perf_counter() - started, 3))
            if self.summary.get("check/passed") == 0:
                self.exit_code = 1
            self.fire("on_fit_end")
        except BaseException as exc:
            self.fire("on_exception", exception=exc)
            raise
