"""The loop and its events.

An :class:`Engine` runs ``epochs`` rounds of ``train_epoch`` then ``evaluate`` and tells its
callbacks about each step through named events. Everything that is not training — W&B, progress
bars, checkpoints, pictures — lives in callbacks, so this module never imports wandb.

Event order for a successful fit::

    on_fit_start
      (on_epoch_start, on_batch_end*, on_validation_end, on_epoch_end)*
    on_test_end          (only when ``test`` returns metrics)
    on_fit_end

``on_log`` fires whenever the trainer reports metrics; ``on_exception`` replaces ``on_fit_end``
when the loop raises (KeyboardInterrupt included), and the exception is re-raised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from core.events import EPOCH_AXIS, STEP_AXIS, Callback


class Engine:
    """A fit loop that fires events; subclasses implement ``train_epoch`` and ``evaluate``.

    Args:
        callbacks: plug-ins notified of every event, in order.
        epochs: number of epochs ``fit`` runs.
        config: the resolved configuration of the run (what W&B records).
        name: short experiment name ("filters", "alexnet", ...), used as the W&B job type.
        steps_per_epoch: training steps per epoch, for progress bars; None when unknown.
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] = (),
        *,
        epochs: int,
        config: Mapping[str, Any] | None = None,
        name: str = "experiment",
        steps_per_epoch: int | None = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.callbacks: list[Callback] = list(callbacks)
        self.epochs = epochs
        self.config: dict[str, Any] = dict(config or {})
        self.name = name
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.global_step = 0
        self.should_stop = False
        # Final numbers for the console summary and the W&B run summary.
        self.summary: dict[str, Any] = {}
        self.fit_seconds = 0.0
        # The process's exit code for this fit, known before ``on_fit_end`` so that the W&B run
        # records the same one: 1 when the experiment's self-check (summary ``check/passed``) failed.
        self.exit_code = 0

    # -- events -------------------------------------------------------------------------------
    def fire(self, event: str, **kwargs: Any) -> None:
        """Call hook ``event`` on every callback."""
        for cb in self.callbacks:
            getattr(cb, event)(self, **kwargs)

    def log(self, metrics: Mapping[str, Any], *, axis: str = STEP_AXIS) -> None:
        """Report metrics against ``axis`` (``trainer/step`` or ``epoch``) to the callbacks."""
        if metrics:
            self.fire("on_log", metrics=metrics, axis=axis)

    def axis_value(self, axis: str) -> int:
        """Current value of an x-axis: steps taken, or epochs completed (1-based)."""
        return self.epoch + 1 if axis == EPOCH_AXIS else self.global_step

    def step_end(self, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        """Count one training step and fire ``on_batch_end``."""
        self.global_step += 1
        self.fire("on_batch_end", batch_idx=batch_idx, outputs=outputs)

    def find_callback(self, kind: type) -> Any:
        """The first callback that is an instance of ``kind``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores of the trainer (model and optimizer state in subclasses)."""
        return {}

    # -- the loop -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> None:
        """Run one epoch of training, calling :meth:`step_end` after every step."""
        raise NotImplementedError

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Return the metrics of the model after ``epoch`` (namespaced keys, e.g. ``val/acc``)."""
        return {}

    def test(self) -> dict[str, float]:
        """Final metrics after the last epoch, e.g. on a held-out test set (``test/acc``); {} for none."""
        return {}

    def fit(self, start_epoch: int = 0) -> dict[str, Any]:
        """Run the loop from ``start_epoch`` and return :attr:`summary`."""
        started = time.perf_counter()
        try:
            self.fire("on_fit_start")
            for epoch in range(start_epoch, self.epochs):
                self.epoch = epoch
                self.fire("on_epoch_start", epoch=epoch)
                self.train_epoch(epoch)
                metrics = self.evaluate(epoch)
                self.fire("on_validation_end", epoch=epoch, metrics=metrics)
                self.log({**metrics}, axis=EPOCH_AXIS)
                self.summary.update(metrics)
                self.fire("on_epoch_end", epoch=epoch, metrics=metrics)
                if self.should_stop:
                    break
            # Logged against the last epoch, so the epoch axis never goes backwards.
            metrics = self.test()
            if metrics:
                self.log({**metrics}, axis=EPOCH_AXIS)
                self.summary.update(metrics)
                self.fire("on_test_end", metrics=metrics)
            self.fit_seconds = time.perf_counter() - started
            self.summary.setdefault("fit_seconds", round(self.fit_seconds, 3))
            if self.summary.get("check/passed") == 0:
                self.exit_code = 1
            self.fire("on_fit_end")
        except BaseException as exc:
            self.fit_seconds = time.perf_counter() - started
            self.fire("on_exception", exception=exc)
            raise
        return self.summary


def check_finite(losses: Mapping[str, float], *, step: int) -> None:
    """Raise FloatingPointError naming every loss term when any of them is not finite."""
    if not all(math.isfinite(v) for v in losses.values()):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at step {step}: {terms}; lower --lr or check the data")
