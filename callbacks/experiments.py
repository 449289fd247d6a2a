"""The experiments' tables and pictures (docs/experiments.md) on the suite's loop, through ``trainer.log``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import wandb

from dlhw.callbacks.panels import (FILTER_COLUMNS, PHOTO_COLUMNS, ConfusionMatrix, DetectionTable, FeatureMaps,
                                   FilterTable, LearnedFilters, PhotoComparison)
from dlhw.callbacks.progress import console_table, report_console
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback, Session
from dlhw.viz.images import MEASURES, slide_figure
from dlhw.viz.kernels import DIRECTIONS


class _Report(Callback):
    reports_only = True


class FilterGrid(_Report):
    """``viz/conv1_filters`` after every epoch."""

    def on_fit_start(self, trainer: Session) -> None:
        self.panel = LearnedFilters(trainer.model)

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        trainer.log(self.panel.payload(f"conv1 after epoch {epoch + 1}"), axis=EPOCH_AXIS)


class FeatureMapTable(_Report):
    """``viz/feature_maps`` after every epoch, of the same validation images, each conv's maps after its ReLU."""

    def __init__(self, n_images: int = 4) -> None:
        self.n_images = n_images

    def on_fit_start(self, trainer: Session) -> None:
        x, y = trainer.loaders.fixed_batch("val", self.n_images)
        layers = list(trainer.model.features)
        after_relu = {name: layers[layers.index(conv) + 1] for name, conv in trainer.model.conv_layers()}
        self.panel = FeatureMaps(trainer.model, x, labels=[trainer.loaders.classes[int(i)] for i in y],
                                 layers=after_relu, pictures=[trainer.loaders.denormalise(img) for img in x])

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        trainer.log(self.panel.payload(epoch + 1), axis=EPOCH_AXIS)


class TestConfusionMatrix(_Report):
    """``test/confusion_matrix`` of the final test predictions."""

    def on_test_end(self, trainer: Session, metrics: Mapping[str, float]) -> None:
        panel = ConfusionMatrix(list(trainer.loaders.classes))
        trainer.log(panel.payload(trainer.test_targets, trainer.test_predictions), axis=EPOCH_AXIS)


class _CachedPictures(_Report):
    panel: DetectionTable | PhotoComparison

    def on_fit_end(self, trainer: Session) -> None:
        self.panel.cache.cleanup()

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        self.panel.cache.cleanup()


class PredictionTable(_CachedPictures):
    """``detect/predictions`` each epoch, of the detection trainer's fixed held-out images (``trainer.viz``)."""

    def __init__(self) -> None:
        self.panel = DetectionTable()

    def on_validation_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        images, targets, outputs = zip(*trainer.viz)
        trainer.log(self.panel.payload(images, targets, outputs, epoch + 1), axis=EPOCH_AXIS)


class PhotoTable(_CachedPictures):
    """``detect/photo`` and ``detect/verdict``, and the same as console tables (only those without W&B)."""

    def __init__(self, *, log_to_wandb: bool = True) -> None:
        self.panel, self.console, self.log_to_wandb = PhotoComparison(), report_console(), log_to_wandb
        self.outputs: dict[str, Mapping[str, Any]] = {}
        self.inference_ms: dict[str, float] = {}

    def on_batch_end(self, trainer: Session, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        self.outputs[outputs["label"]] = outputs["output"]
        self.inference_ms[outputs["label"]] = outputs["inference_ms"]

    def on_validation_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        photo = trainer.results["photo"]
        console_rows = [[r[0], photo.name, *r[2:]] for r in self.panel.rows(self.outputs, self.inference_ms)]
        self.console.print(console_table(f"both models on {photo.name} ({photo.source})", PHOTO_COLUMNS, console_rows))
        verdict_cols, verdict_rows = trainer.results["verdict"]
        self.console.print(console_table("verdict: option 1 vs option 2", verdict_cols, verdict_rows))
        if self.log_to_wandb:
            trainer.log({**self.panel.payload(photo.image, self.outputs, self.inference_ms, name=photo.name),
                         "detect/verdict": wandb.Table(columns=verdict_cols, data=verdict_rows)}, axis=EPOCH_AXIS)


class FilterTables(Callback):
    """Per photo ``image/NAME/hf_ratio/FILTER``; at the epoch's end ``filters/outputs`` and ``filters/checks``."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def on_batch_end(self, trainer: Session, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        name = outputs["image_name"]
        rows, ratios = FilterTable.rows(name, outputs["image"], outputs["kernels"])
        self.rows += rows
        trainer.log({f"image/{name}/hf_ratio/{k}": v for k, v in ratios.items()}, axis=STEP_AXIS)

    def on_validation_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        checks = trainer.results["checks"]
        columns = ["filter", *(f"grating_gain_{d}" for d in DIRECTIONS), "noise_hf_ratio", "constant_max_error",
                   "passed"]
        rows = [[name, *(round(per_dir[d], 4) for d in DIRECTIONS), round(checks.hf_ratio[name], 4),
                 checks.constant_error[name], checks.passed(name)] for name, per_dir in checks.gains.items()]
        trainer.log({"filters/outputs": wandb.Table(columns=FILTER_COLUMNS, data=self.rows),
                     "filters/checks": wandb.Table(columns=columns, data=rows)}, axis=EPOCH_AXIS)
        self.rows = []


def _r(v: Any) -> Any:
    """A number, or a list of them, to 8 decimals."""
    return [_r(x) for x in v] if isinstance(v, list) else round(float(v), 8)


class IoUPlots(Callback):
    """The slide's plots and tables (``iou/slide*``, ``iou/kinks``) and the descents' (``iou/descent*``), at the end."""

    def on_validation_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        if epoch == trainer.epochs - 1:
            trainer.log(self._descent(trainer), axis=EPOCH_AXIS)

    def on_test_end(self, trainer: Session, metrics: Mapping[str, float]) -> None:
        trainer.log(self._slide(trainer.results["slide"]), axis=EPOCH_AXIS)

    @staticmethod
    def _slide(s: Any) -> dict:
        x, names = s.x.tolist(), list(s.values)
        rows = [[_r(x[i]), *(c for m in names for c in (_r(s.values[m][i]), _r(s.grads[m][i]))),
                 _r(s.fd_left[i]), _r(s.fd_right[i])] for i in range(len(x))]
        columns = ["x", *(c for m in names for c in (m, f"d_{m}_dx")), "iou_fd_left", "iou_fd_right"]
        kinks = [[k.x, k.edges, _r(k.iou), _r(k.left), _r(k.right), _r(k.right - k.left), _r(k.autograd)]
                 for k in s.kinks]
        picture = slide_figure(s.x.numpy(), {m: v.numpy() for m, v in s.values.items()},
                               {m: g.numpy() for m, g in s.grads.items()}, [k.x for k in s.kinks])
        return {
            "iou/slide": wandb.Table(columns=columns, data=rows),
            "iou/kinks": wandb.Table(columns=["x", "edges", "iou", "left_derivative", "right_derivative", "jump",
                                              "autograd_at_kink"], data=kinks),
            "iou/slide_values": wandb.plot.line_series(
                xs=x, ys=[s.values[m].tolist() for m in names], keys=[MEASURES[m] for m in names],
                title="IoU, GIoU and DIoU as B slides across A", xname="x (left edge of B)"),
            "iou/slide_grads": wandb.plot.line_series(
                xs=x, ys=[s.grads[m].tolist() for m in names], keys=[f"d{MEASURES[m]}/dx" for m in names],
                title="Autograd derivative along the slide", xname="x (left edge of B)"),
            "iou/slide_plot": wandb.Image(picture, caption=f"A = {list(s.box_a)}, B starts at {list(s.box_b)}"),
        }

    @staticmethod
    def _descent(trainer: Session) -> dict:
        curves, descents, starts = (trainer.results[k] for k in ("curves", "descents", "starts"))
        names = list(curves)
        ends = [(descents[n].boxes().tolist(), descents[n].iou().tolist()) for n in names]
        rows = [[i, _r(start), *(c for boxes, iou in ends for c in (_r(boxes[i]), _r(iou[i])))]
                for i, start in enumerate(starts.tolist())]
        columns = ["box", "start", *(c for n in names for c in (f"{n}_end", f"{n}_iou"))]
        return {"iou/descent": wandb.plot.line_series(xs=list(range(1, len(curves[names[0]]) + 1)),
                                                      ys=[curves[n] for n in names],
                                                      keys=[f"{n}: mean IoU" for n in names], xname="step",
                                                      title="Mean IoU with the target, from disjoint starts"),
                "iou/descent_boxes": wandb.Table(columns=columns, data=rows)}
