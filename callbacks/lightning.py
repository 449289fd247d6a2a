"""The panels as Lightning callbacks: each logs to the ``WandbLogger``'s run (else ``wandb.run``) at the epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters
from dlhw.callbacks.weight_decay import WeightDecayProbe


def _run(trainer: pl.Trainer) -> Any:
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class LearnedFiltersCallback(pl.Callback):
    """``viz/conv1_filters`` after every training epoch."""

    def __init__(self, **panel: Any) -> None:
        self.options = panel

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.panel = LearnedFilters(pl_module, run=_run(trainer), **self.options)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            epoch = trainer.current_epoch + 1
            self.panel.log(step=epoch, caption=f"{self.panel.name} after epoch {epoch}")


class FeatureMapsCallback(pl.Callback):
    """``viz/feature_maps`` of fixed ``inputs`` after every training epoch."""

    def __init__(self, inputs: torch.Tensor, **panel: Any) -> None:
        self.inputs, self.options = inputs, panel

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.panel = FeatureMaps(pl_module, self.inputs, run=_run(trainer), **self.options)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.panel.log(step=trainer.current_epoch + 1)


def _predictions(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, dict) and "preds" in outputs:
        return outputs["preds"]
    return outputs["logits"].argmax(-1) if isinstance(outputs, dict) and "logits" in outputs else None


class ConfusionMatrixCallback(pl.Callback):
    """``test/confusion_matrix`` at the end of ``trainer.test``, of what ``test_step`` returned (docs/plugins.md)."""

    def __init__(self, class_names: Sequence[str], *,
                 batch_to_xy: Callable[[Any], tuple[Any, torch.Tensor]] = lambda b: (b[0], b[1]),
                 outputs_to_preds: Callable[[Any], torch.Tensor | None] = _predictions, **panel: Any) -> None:
        self.class_names, self.batch_to_xy, self.outputs_to_preds = list(class_names), batch_to_xy, outputs_to_preds
        self.options = panel

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.targets: list[int] = []
        self.predictions: list[int] = []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = self.batch_to_xy(batch)
        preds = self.outputs_to_preds(outputs)
        if preds is None:
            with torch.no_grad():
                preds = pl_module(x).argmax(-1)
        self.predictions += preds.tolist()
        self.targets += y.tolist()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            ConfusionMatrix(self.class_names, run=_run(trainer), **self.options).log(
                self.targets, self.predictions, step=trainer.current_epoch + 1)


class WeightDecayCallback(pl.Callback):
    """A probe on every optimizer that decays; with ``curvature_batch``, their curvature after every training epoch."""

    def __init__(self, *, curvature_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy, prefix: str = "wd",
                 **probe: Any) -> None:
        self.curvature_batch, self.loss_fn, self.prefix, self.options = curvature_batch, loss_fn, prefix, probe
        self.probes: list[WeightDecayProbe] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        decaying = [opt for opt in trainer.optimizers if any(g.get("weight_decay") for g in opt.param_groups)]
        prefixes = [f"{self.prefix}/opt{i}" for i in range(len(decaying))] if len(decaying) > 1 else [self.prefix]
        self.probes = [WeightDecayProbe(opt, run=_run(trainer), prefix=prefix, **self.options)
                       for opt, prefix in zip(decaying, prefixes)]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.curvature_batch is not None:
            x, y = (t.to(pl_module.device) for t in self.curvature_batch)
            for probe in self.probes:
                probe.curvature(lambda: self.loss_fn(pl_module(x), y), pl_module.parameters(), model=pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for probe in self.probes:
            probe.remove()
        self.probes = []
