"""The detection panels on the suite's loops: prediction tables each epoch, the photo table and the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import wandb
from rich.console import Console

from dlhw.callbacks.panels import PHOTO_COLUMNS, DetectionTable, PhotoComparison
from dlhw.callbacks.progress import console_table, report_console
from dlhw.core.events import EPOCH_AXIS, Callback, Loop


class _CachedPictures(Callback):
    """An adapter whose panel's picture folder goes at the end of the fit, whatever its outcome."""

    reports_only = True
    panel: DetectionTable | PhotoComparison

    def on_fit_end(self, trainer: Loop) -> None:
        self.panel.cache.remove()

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        self.panel.cache.remove()


class PredictionTable(_CachedPictures):
    """``detect/predictions`` each epoch, of the detection trainer's fixed held-out images (``trainer.viz``)."""

    def __init__(self) -> None:
        self.panel = DetectionTable()

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        images, targets, outputs = zip(*trainer.viz)
        trainer.log(self.panel.payload(images, targets, outputs, epoch + 1), axis=EPOCH_AXIS)


class PhotoTable(_CachedPictures):
    """``detect/photo`` and the verdict table ``detect/verdict``, and the same numbers as console
    tables (only those with ``log_to_wandb`` False, when W&B is disabled)."""

    def __init__(self, console: Console | None = None, *, log_to_wandb: bool = True) -> None:
        self.panel = PhotoComparison()
        self.console = console or report_console()
        self.log_to_wandb = log_to_wandb
        self.outputs: dict[str, Mapping[str, Any]] = {}
        self.inference_ms: dict[str, float] = {}

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        self.outputs[outputs["label"]] = outputs["output"]
        self.inference_ms[outputs["label"]] = outputs["inference_ms"]

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        photo = trainer.results["photo"]
        console_rows = [[r[0], photo.name, *r[2:]] for r in self.panel.rows(self.outputs, self.inference_ms)]
        self.console.print(console_table(f"both models on {photo.name} ({photo.source})", PHOTO_COLUMNS, console_rows))
        verdict_cols, verdict_rows = trainer.results["verdict"]
        self.console.print(console_table("verdict: option 1 vs option 2", verdict_cols, verdict_rows))
        if self.log_to_wandb:
            trainer.log({**self.panel.payload(photo.image, self.outputs, self.inference_ms, name=photo.name),
                         "detect/verdict": wandb.Table(columns=verdict_cols, data=verdict_rows)}, axis=EPOCH_AXIS)
