"""Events, their x-axes and the rank that owns logging: below trainers and callbacks, so neither imports the other."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

STEP_AXIS = "trainer/step"
EPOCH_AXIS = "epoch"


if TYPE_CHECKING:  # what a callback may use of the run that fires its events: a Session (or an Engine)
    from dlhw.core.session import Session as Loop
else:
    Loop = Any


class Callback:
    """Base class for plug-ins; every hook is a no-op. A ``reports_only`` callback (pictures and tables for
    W&B) that raises is warned about once and skipped: a reporting failure must never stop training."""

    reports_only = False

    def on_fit_start(self, trainer: Loop) -> None:
        """Called once before the first epoch."""

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        """Called at the start of every training epoch."""

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        """Called after every training step with what the step produced."""

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after evaluation with the epoch's metrics."""

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called when an epoch (training and evaluation) is complete."""

    def on_test_end(self, trainer: Loop, metrics: Mapping[str, float]) -> None:
        """Called after the last epoch with the metrics of :meth:`Engine.test`, when it has any."""

    def on_fit_end(self, trainer: Loop) -> None:
        """Called once after the last epoch when nothing went wrong."""

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        """Called when the loop raises; the exception is re-raised afterwards."""

    def on_log(self, trainer: Loop, metrics: Mapping[str, Any], axis: str) -> None:
        """Called when the trainer reports metrics against the x-axis ``axis``."""

    def on_checkpoint_saved(self, trainer: Loop, path: str, aliases: Sequence[str],
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
