"""A run's lifecycle as the callbacks see it, with or without a training loop.

A :class:`Session` fires ``on_fit_start``, then whatever the experiment reports (``on_log``,
``on_batch_end``, epoch ends), then ``on_fit_end``, or ``on_exception`` when the work raises. The
W&B logger, the progress bar, the summary table and the panels' adapters need nothing more, so
an experiment that trains nothing (the filters, the IoU slide, the photo comparison) is a plain
function over a session, and ``trainers.engine.Engine`` is a session that adds a training loop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback, is_rank_zero

# The signals that ask a training run to stop cleanly: Ctrl-C, and what schedulers and
# preemptible machines send before they kill a process.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A sweep runner names the metric it optimises and a file: each epoch-axis report of that metric
# is appended as a ``[epoch, value]`` line, which the runner reads for early stopping without
# reading W&B's files (whose writes W&B buffers) or starting a reader per trial.
METRIC_ENV, METRIC_FILE_ENV = "DLHW_SWEEP_METRIC", "DLHW_SWEEP_METRIC_FILE"


def report_sweep_metric(metrics: Mapping[str, Any], step: int) -> None:
    """Append ``[step, value]`` of the sweep's metric to ``$DLHW_SWEEP_METRIC_FILE`` (rank 0 only)."""
    name, path = os.environ.get(METRIC_ENV), os.environ.get(METRIC_FILE_ENV)
    if name in metrics and path and is_rank_zero():
        with open(path, "a") as fh:  # one write of one line: a reader sees it whole or not at all
            fh.write(json.dumps([step, float(metrics[name])]) + "\n")


class Stopped(BaseException):
    """A stop asked for by SIGINT or SIGTERM, raised between two steps, where the run's state is
    whole and can be checkpointed. A BaseException, as KeyboardInterrupt is, so that code
    catching ``Exception`` does not swallow it.

    ``exit_code`` is the shell's convention, 128 + the signal's number (130 for SIGINT, 143 for
    SIGTERM), what an in-process caller gets back; a process ends with :func:`end_by_signal`
    instead. ``checkpoint`` is set by whoever wrote the checkpoint the run can resume from.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint: str | None = None
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def end_by_signal(signum: int) -> None:
    """End this process as killed by ``signum``, after its clean stop (checkpoint written, W&B run
    finished as preempting). ``wandb agent`` counts any exit status > 0 as a failed run, so a
    trial it stopped must not exit 143; a death by the signal is what the agent (and torchrun,
    and a shell, which still prints 143) expects of a stopped process."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class Session:
    """Fires the events of one run to its callbacks and holds what they read (a :class:`~core.events.Loop`).

    Args:
        callbacks: plug-ins notified of every event, in order.
        name: short experiment name ("filters", "alexnet", ...), used as the W&B job type.
        config: the resolved configuration of the run (what W&B records).
        epochs: epochs the run reports, for progress bars; 1 for a run without epochs.
        steps_per_epoch: steps per epoch, for progress bars; None when unknown.
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] = (),
        *,
        name: str = "experiment",
        config: Mapping[str, Any] | None = None,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.callbacks: list[Callback] = list(callbacks)
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.global_step = 0
        # Steps taken in the current epoch: where a checkpoint written mid-epoch resumes.
        self.batch_in_epoch = 0
        self.should_stop = False
        # The stop signal received, acted on at the next step's end (see :meth:`stopping_on_signals`).
        self.stop_signal: int | None = None
        # Final numbers for the console summary and the W&B run summary.
        self.summary: dict[str, Any] = {}
        self.fit_seconds = 0.0
        # The process's exit code for this run, known before ``on_fit_end`` so that the W&B run
        # records the same one: 1 when the experiment's self-check (summary ``check/passed``) failed.
        self.exit_code = 0
        # What an experiment without a trainer hands its panels' adapters (the kernels' checks,
        # the slide, the photo...), by name; a training loop keeps such things as attributes.
        self.results: dict[str, Any] = {}
        # Reporting callbacks already warned about (see fire).
        self._report_failures: set[int] = set()

    def fire(self, event: str, **kwargs: Any) -> None:
        """Call hook ``event`` on every callback; a ``reports_only`` callback that raises is warned
        about once and skipped (see :class:`~core.events.Callback`)."""
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
        """Report metrics against ``axis`` (``trainer/step`` or ``epoch``) to the callbacks."""
        if metrics:
            self.fire("on_log", metrics=metrics, axis=axis)
            if axis == EPOCH_AXIS:
                report_sweep_metric(metrics, self.axis_value(axis))

    def axis_value(self, axis: str) -> int:
        """Current value of an x-axis: steps taken, or epochs completed (1-based)."""
        return self.epoch + 1 if axis == EPOCH_AXIS else self.global_step

    def step_end(self, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        """Count one step and fire ``on_batch_end``."""
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
        """While the body runs, SIGINT and SIGTERM ask for a clean stop at the next step's end
        instead of killing the process mid-step; a second Ctrl-C aborts at once
        (KeyboardInterrupt). The previous handlers come back on exit. Only the main thread can
        install handlers: elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.stop_signal is None and is_rank_zero():  # under torchrun every process hears it
                print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                      f"(Ctrl-C again to abort at once)", file=sys.stderr)
            self.stop_signal = signum

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Report an epoch's metrics: ``on_validation_end``, logged on the epoch axis, kept in the
        summary, then ``on_epoch_end``."""
        self.fire("on_validation_end", epoch=epoch, metrics=metrics)
        self.log({**metrics}, axis=EPOCH_AXIS)
        self.summary.update(metrics)
        self.fire("on_epoch_end", epoch=epoch, metrics=metrics)

    def test_end(self, metrics: Mapping[str, float]) -> None:
        """Report the final metrics after the last epoch (logged against it, so the epoch axis
        never goes backwards) and fire ``on_test_end``; nothing for no metrics."""
        if metrics:
            self.log({**metrics}, axis=EPOCH_AXIS)
            self.summary.update(metrics)
            self.fire("on_test_end", metrics=metrics)

    def find_callback(self, kind: type) -> Any:
        """The first callback that is an instance of ``kind``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    @contextmanager
    def running(self) -> Iterator[Session]:
        """``on_fit_start`` on entry; on a clean exit the summary's ``fit_seconds``, the exit code
        and ``on_fit_end``; when the body raises (KeyboardInterrupt included) ``on_exception``,
        then the exception goes on."""
        started = time.perf_counter()
        try:
            self.fire("on_fit_start")
            yield self
            self.fit_seconds = time.perf_counter() - started
            self.summary.setdefault("fit_seconds", round(self.fit_seconds, 3))
            if self.summary.get("check/passed") == 0:
                self.exit_code = 1
            self.fire("on_fit_end")
        except BaseException as exc:
            self.fit_seconds = time.perf_counter() - started
            self.fire("on_exception", exception=exc)
            raise
