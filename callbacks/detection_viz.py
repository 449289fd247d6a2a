"""Detection pictures for W&B: prediction tables with box (and mask) layers, the photo table, the verdict.

Boxes and masks travel as ``wandb.Image`` layers over the untouched picture, so the dashboard can
toggle ground truth and predictions and filter by score. Each picture is written to a PNG once
and every epoch's ``wandb.Image`` refers to that same file: W&B stores media by content hash, so
the pixels are uploaded once however many epochs show them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import wandb
from PIL import Image
from rich.console import Console
from rich.table import Table

from callbacks.progress import _fmt, report_console
from callbacks.tables import EpochTable
from core.events import Callback, EPOCH_AXIS, Loop
from viz.images import to_uint8

CLASS_LABELS = {1: "person"}
MAX_BOXES = 30


def _boxes(boxes: torch.Tensor, scores: torch.Tensor | None = None) -> dict[str, Any]:
    data = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()[:MAX_BOXES]):
        item: dict[str, Any] = {"position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
                                "domain": "pixel", "class_id": 1}
        if scores is None:
            item["box_caption"] = "person"
        else:
            s = float(scores[i])
            item.update(box_caption=f"person {s:.2f}", scores={"score": s})
        data.append(item)
    return {"box_data": data, "class_labels": CLASS_LABELS}


def _mask_layer(masks: torch.Tensor, keep: torch.Tensor) -> dict[str, Any]:
    """Predicted soft masks of the kept detections as one label map (1 = person)."""
    hw = masks.shape[-2:]
    chosen = masks[keep, 0] > 0.5 if keep.any() else torch.zeros(1, *hw, dtype=torch.bool)
    return {"mask_data": chosen.any(0).numpy().astype(np.uint8), "class_labels": CLASS_LABELS}


class _PictureCache:
    """Each picture written to PNG once; later references reuse the same file. The folder is
    removed when the fit ends: W&B has copied every logged picture into its run by then."""

    def __init__(self) -> None:
        self.dir: Path | None = None  # made on the first picture
        self.paths: dict[str, str] = {}

    def path(self, key: str, pixels: np.ndarray) -> str:
        if key not in self.paths:
            if self.dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix="dlhw-pictures-"))
            target = self.dir / f"{len(self.paths):04d}.png"
            Image.fromarray(pixels).save(target)
            self.paths[key] = str(target)
        return self.paths[key]

    def remove(self) -> None:
        """Delete the folder and forget its pictures."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self.paths.clear()


class _CachedPictures(Callback):
    """A callback owning a picture cache, removed at the end of the fit whatever its outcome."""

    def __init__(self) -> None:
        self.cache = _PictureCache()

    def on_fit_end(self, trainer: Loop) -> None:
        self.cache.remove()

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        self.cache.remove()


def annotated_image(path: str, output: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor] | None = None,
                    *, mask_score: float = 0.5, caption: str | None = None) -> wandb.Image:
    """A picture with predicted boxes (scores), ground-truth boxes and predicted masks as W&B layers."""
    boxes = {"predictions": _boxes(output["boxes"], output["scores"])}
    if target is not None:
        boxes["ground_truth"] = _boxes(target["boxes"])
    masks = {"predictions": _mask_layer(output["masks"], output["scores"] >= mask_score)} if "masks" in output else None
    return wandb.Image(path, boxes=boxes, masks=masks, caption=caption)


class PredictionTable(_CachedPictures):
    """``detect/predictions`` each epoch: the fixed held-out images with ground truth and predictions.

    Columns: epoch | image id | image (box layers ``ground_truth``, ``predictions``; mask layer for
    Mask R-CNN) | ground-truth people | predictions at score >= 0.5 | their mean score. One
    incremental table: each epoch adds its rows to the same table view.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table = EpochTable(["epoch", "image_id", "image", "gt_people", "pred_people@0.5", "mean_score"])

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        rows = []
        for image, target, output in trainer.viz:
            image_id = int(target["image_id"])
            path = self.cache.path(f"val-{image_id}", to_uint8(image))
            confident = output["scores"][output["scores"] >= 0.5]
            rows.append([epoch + 1, image_id, annotated_image(path, output, target), len(target["boxes"]),
                         len(confident), float(confident.mean()) if len(confident) else 0.0])
        trainer.log({"detect/predictions": self.table.with_rows(rows)}, axis=EPOCH_AXIS)


def _console_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("n/a" if v is None else _fmt(v) for v in row))
    return table


class PhotoTable(_CachedPictures):
    """The photo comparison: one W&B table ``detect/photo`` and the same numbers as a console table.

    Columns: model | photo with boxes | people at score >= 0.5 | >= 0.7 | mean score | inference ms.
    With ``log_to_wandb`` False (W&B disabled) only the console tables are printed.
    """

    def __init__(self, console: Console | None = None, *, log_to_wandb: bool = True) -> None:
        super().__init__()
        self.console = console or report_console()
        self.log_to_wandb = log_to_wandb
        self.rows: list[list[Any]] = []

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        self.rows.append([outputs["label"], outputs["output"], outputs["people@0.5"], outputs["people@0.7"],
                          outputs["mean_score"], outputs["inference_ms"]])

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        from trainers.detection.beatles import photo_columns

        photo = trainer.photo
        columns = list(photo_columns())
        console_rows = [[r[0], photo.name, *r[2:]] for r in self.rows]
        self.console.print(_console_table(f"both models on {photo.name} ({photo.source})", columns, console_rows))
        verdict_cols, verdict_rows = trainer.verdict()
        self.console.print(_console_table("verdict: option 1 vs option 2", verdict_cols, verdict_rows))
        if not self.log_to_wandb:
            return
        path = self.cache.path(photo.name, photo.image)
        data = [[r[0], annotated_image(path, r[1], caption=r[0]), *r[2:]] for r in self.rows]
        trainer.log({"detect/photo": wandb.Table(columns=columns, data=data),
                     "detect/verdict": wandb.Table(columns=verdict_cols, data=verdict_rows)}, axis=EPOCH_AXIS)
