"""The training loop and its events.

An :class:`Engine` runs ``epochs`` rounds of ``train_epoch`` then ``evaluate`` and tells its
callbacks about each step through named events; the run's lifecycle (fit start and end, the
exception path, the exit code) is its :class:`~core.session.Session`'s, shared with the
experiments that train nothing. Everything that is not training — W&B, progress
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
from collections.abc import Iterable, Mapping
from typing import Any

from core.events import Callback
from core.session import Session


class Engine(Session):
    """A training loop over a :class:`~core.session.Session`; subclasses implement ``train_epoch``
    and ``evaluate``.

    Args:
        callbacks: plug-ins notified of every event, in order.
        epochs: number of epochs ``fit`` runs.
        config: the resolved configuration of the run (what W&B records).
        name: short experiment name ("alexnet", "detect-option1", ...), used as the W&B job type.
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
        super().__init__(callbacks, name=name, config=config, epochs=epochs, steps_per_epoch=steps_per_epoch)

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
        with self.running():
            for epoch in range(start_epoch, self.epochs):
                self.epoch = epoch
                self.fire("on_epoch_start", epoch=epoch)
                self.train_epoch(epoch)
                self.epoch_end(epoch, self.evaluate(epoch))
                if self.should_stop:
                    break
            self.test_end(self.test())
        return self.summary


def check_finite(losses: Mapping[str, float], *, step: int) -> None:
    """Raise FloatingPointError naming every loss term when any of them is not finite."""
    if not all(math.isfinite(v) for v in losses.values()):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at step {step}: {terms}; lower --lr or check the data")
