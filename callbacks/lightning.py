"""The suite's panels as Lightning callbacks, beside Lightning's own ``WandbLogger``.

.. code-block:: python

    from lightning.pytorch.loggers import WandbLogger
    from dlhw.callbacks.lightning import ConfusionMatrixCallback, FeatureMapsCallback, LearnedFiltersCallback, WeightDecayCallback

    trainer = L.Trainer(logger=WandbLogger(), callbacks=[LearnedFiltersCallback(), FeatureMapsCallback(x[:4]),
                                                         ConfusionMatrixCallback(classes), WeightDecayCallback()])

Each callback logs to the run of the trainer's ``WandbLogger`` (else ``wandb.run``) against its
panel's own axis, with the epoch as the step. Needs the ``lightning`` extra
(``pip install -e ".[lightning]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters
from dlhw.callbacks.weight_decay import WeightDecayProbe


def _run(trainer: pl.Trainer) -> Any:
    """The W&B run of the trainer's WandbLogger, or None (the panels then use ``wandb.run``)."""
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class LearnedFiltersCallback(pl.Callback):
    """``viz/conv1_filters`` after every training epoch (:class:`~callbacks.panels.LearnedFilters`)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.panel = LearnedFilters(pl_module, run=_run(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.panel.log(step=trainer.current_epoch + 1, caption=f"conv1 after epoch {trainer.current_epoch + 1}")


class FeatureMapsCallback(pl.Callback):
    """``viz/feature_maps`` of fixed ``inputs`` after every training epoch (:class:`~callbacks.panels.FeatureMaps`)."""

    def __init__(self, inputs: torch.Tensor, **panel: Any) -> None:
        self.inputs, self.options = inputs, panel

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.panel = FeatureMaps(pl_module, self.inputs, run=_run(trainer), **self.options)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.panel.log(step=trainer.current_epoch + 1)


class ConfusionMatrixCallback(pl.Callback):
    """``test/confusion_matrix`` at the end of ``trainer.test``: the module's argmax on each test
    batch ``(x, y)`` against ``y`` (:class:`~callbacks.panels.ConfusionMatrix`)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.targets: list[int] = []
        self.predictions: list[int] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.targets, self.predictions = [], []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            self.predictions += pl_module(x).argmax(-1).tolist()
        self.targets += y.tolist()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            ConfusionMatrix(self.class_names, run=_run(trainer)).log(self.targets, self.predictions,
                                                                     step=trainer.current_epoch + 1)


class WeightDecayCallback(pl.Callback):
    """The :class:`~callbacks.weight_decay.WeightDecayProbe` on the trainer's first optimizer, and
    its curvature after every training epoch when ``curvature_batch`` ``(x, y)`` is given."""

    def __init__(self, *, curvature_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.nn.functional.cross_entropy,
                 **probe: Any) -> None:
        self.curvature_batch, self.loss_fn, self.options = curvature_batch, loss_fn, probe
        self.probe: WeightDecayProbe | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.probe = WeightDecayProbe(trainer.optimizers[0], run=_run(trainer), **self.options)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None and self.curvature_batch is not None:
            x, y = (t.to(pl_module.device) for t in self.curvature_batch)
            self.probe.curvature(lambda: self.loss_fn(pl_module(x), y), pl_module.parameters())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
