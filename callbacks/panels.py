"""W&B panels for any training loop (docs/plugins.md): they log to ``run=`` or ``wandb.run`` without moving its step."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import wandb
from PIL import Image
from torch import nn

from dlhw.core.errors import suggest
from dlhw.viz.images import THRESHOLDS, feature_map_grid, filter_grid, kernel_picture, people_counts, to_uint8, upscale
from dlhw.viz.kernels import DIRECTIONS, apply_kernel, directional_gains, high_frequency_energy


class Panel:
    """Where a panel's numbers and pictures go: ``publish`` when given, else the W&B run, under ``key``."""

    axis = "panel/step"
    key = ""
    takes_step = False  # whether ``payload`` names the step (in a table's rows or a caption)

    def __init__(self, *, key: str | None = None, run: Any = None,
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.key, self.run, self.publish = key or self.key, run, publish
        self._defined: set[str] = set()
        self._last_step: int | None = None
        self._open: tuple[Any, int, dict[str, Any]] | None = None  # (run, run.step, what we wrote there)

    def _active_run(self) -> Any:
        run = self.run if self.run is not None else wandb.run
        if run is None:
            raise RuntimeError(f"{type(self).__name__}: no active W&B run; call wandb.init() first or pass run=")
        return run

    def merge(self, earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
        """Into W&B's still open row: pictures as a list, else the last value."""
        merged = {**earlier, **now}
        for key, value in now.items():
            old = earlier.get(key)
            if isinstance(value, wandb.Image) and isinstance(old, (wandb.Image, list)):
                merged[key] = [*(old if isinstance(old, list) else [old]), value]
        return merged

    def send(self, payload: Mapping[str, Any], step: int) -> None:
        if not payload:
            return
        if self.publish is not None:
            self.publish(dict(payload))
            return
        run = self._active_run()
        if self._last_step is not None and step < self._last_step:
            raise ValueError(f"{type(self).__name__}: step {step} goes back from {self._last_step}; "
                             f"pass a step that never decreases")
        self._last_step = step
        new = [k for k in payload if k not in self._defined]
        if new:
            run.define_metric(self.axis, hidden=True)
            for key in new:
                run.define_metric(key, step_metric=self.axis)
            self._defined.update(new)
        row = {**payload, self.axis: step}
        still_open = self._open is not None and self._open[0] is run and self._open[1] == run.step
        row = self.merge(self._open[2] if still_open else {}, row)
        # commit=False: never move W&B's global step, so a user's run.log(step=i) is never dropped.
        run.log(row, commit=False)
        self._open = (run, run.step, row)

    def log(self, *args: Any, step: int | None = None, **kwargs: Any) -> None:
        """Log ``payload(*args, **kwargs)`` at ``step`` (default: one past the last)."""
        step = step if step is not None else (self._last_step or 0) + 1
        if self.takes_step:
            kwargs["step"] = step
        self.send(self.payload(*args, **kwargs), step)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then restore its mode and the random states: the training stays unchanged."""
    was_training = model.training
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)


def named_layers(model: nn.Module, layers: Any, *, what: str) -> dict[str, nn.Module]:
    """``layers`` (a name, a module, a list of either, a mapping; ``None``: every ``Conv2d``) as name -> module."""
    if layers is None:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        if not layers:
            raise ValueError(f"{what}: {type(model).__name__} has no Conv2d layer to show; pass a conv model or "
                             f"layers=")
    if isinstance(layers, Mapping):
        return dict(layers)
    by_name = dict(model.named_modules())
    by_module = {m: n for n, m in by_name.items()}
    out = {}
    for layer in [layers] if isinstance(layers, (str, nn.Module)) else layers:
        name = layer if isinstance(layer, str) else by_module.get(layer)
        if name is None:
            raise ValueError(f"{what}: the {type(layer).__name__} given is not in {type(model).__name__}; "
                             f"pass one of its layers")
        if name not in by_name:
            raise ValueError(f"{what}: no layer {layer!r} in {type(model).__name__}{suggest(layer, by_name)}")
        out[name] = by_name[name]
    return out


class LearnedFilters(Panel):
    """``viz/conv1_filters``: the filters of one ``Conv2d`` (``layer``; default the first) as one picture."""

    axis = "viz/step"
    key = "viz/conv1_filters"
    takes_step = True

    def __init__(self, model: nn.Module, *, layer: str | nn.Module | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        (self.name, self.conv), *_ = named_layers(model, layer, what="LearnedFilters").items()
        if not isinstance(self.conv, nn.Conv2d):
            raise ValueError(f"LearnedFilters: {self.name!r} is a {type(self.conv).__name__}, not a Conv2d; "
                             f"pass a conv layer")

    def payload(self, caption: str | None = None, step: int | None = None) -> dict[str, Any]:
        caption = caption or (self.name if step is None else f"{self.name} at step {step}")
        return {self.key: wandb.Image(to_uint8(filter_grid(self.conv.weight.detach().cpu())), caption=caption)}


class FeatureMaps(Panel):
    """``viz/feature_maps``: one incremental table of fixed ``inputs``' maps, caught by forward hooks on ``layers``."""

    axis = "viz/step"
    key = "viz/feature_maps"
    takes_step = True

    def __init__(self, model: nn.Module, inputs: torch.Tensor, *, labels: Sequence[str] | None = None,
                 layers: Any = None, pictures: torch.Tensor | None = None, max_maps: int = 16, **kw: Any) -> None:
        super().__init__(**kw)
        self.model, self.inputs, self.max_maps = model, inputs, max_maps
        self.layers = named_layers(model, layers, what="FeatureMaps")
        for name, out in self.capture(inputs[:1]):
            if out.dim() != 4:
                raise ValueError(f"FeatureMaps: layer {name!r} outputs shape {tuple(out.shape)}, not (N, C, H, W) "
                                 f"maps; pass conv layers (or what follows one) in layers=")
        self.labels = list(labels) if labels is not None else [str(i) for i in range(len(inputs))]
        self.pictures = [wandb.Image(to_uint8(upscale(img.detach().float().cpu(), 96)), caption=label)
                         for img, label in zip(inputs if pictures is None else pictures, self.labels)]
        self.table = wandb.Table(columns=["epoch", "input", "label", "layer", "feature_maps"], log_mode="INCREMENTAL")

    @torch.no_grad()
    def capture(self, inputs: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
        """(layer name, activations) of the fixed inputs, or of ``inputs``, in forward order."""
        captured: list[tuple[str, torch.Tensor]] = []
        hooks = [m.register_forward_hook(lambda mod, i, o, name=name: captured.append((name, o.detach().cpu().clone())))
                 for name, m in self.layers.items()]
        try:
            with untouched(self.model):
                self.model((self.inputs if inputs is None else inputs).to(next(self.model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
        return captured

    def payload(self, step: int) -> dict[str, Any]:
        for layer, maps in self.capture():
            for i, fmap in enumerate(maps):
                (n, h, w), shown = fmap.shape, min(self.max_maps, fmap.shape[0])
                picture = wandb.Image(to_uint8(feature_map_grid(fmap, self.max_maps)),
                                      caption=f"{layer}: {shown} of {n} maps, {h}x{w}")
                self.table.add_data(step, self.pictures[i], self.labels[i], layer, picture)
        return {self.key: self.table}


class ConfusionMatrix(Panel):
    """``test/confusion_matrix``: W&B's interactive confusion matrix of targets and predictions."""

    axis = "test/step"
    key = "test/confusion_matrix"

    def __init__(self, class_names: Sequence[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.class_names = list(class_names)

    def payload(self, targets: Sequence[int] | torch.Tensor, predictions: Sequence[int] | torch.Tensor) -> dict:
        return {self.key: wandb.plot.confusion_matrix(y_true=torch.as_tensor(targets).tolist(),
                                                      preds=torch.as_tensor(predictions).tolist(),
                                                      class_names=self.class_names, title="test confusion matrix")}


FILTER_COLUMNS = ["image", "input", "filter", "kernel", "kernel_values", "output",
                  *(f"gain_{d}" for d in DIRECTIONS), "hf_energy_ratio", "mean_shift"]


class FilterTable(Panel):
    """``filters/outputs``: one row per (image, 3x3 kernel) with the output and its measures; images (C, H, W)."""

    axis = "filters/step"
    key = "filters/outputs"

    @staticmethod
    def rows(image_name: str, image: torch.Tensor, kernels: Mapping[str, torch.Tensor]) -> tuple[list, dict]:
        """One photo's rows, and each kernel's high-frequency energy ratio on it."""
        source = wandb.Image(to_uint8(image), caption=image_name)
        rows, ratios = [], {}
        for name, k in kernels.items():
            out = apply_kernel(image, k)
            gains = directional_gains(image, out)
            ratios[name] = high_frequency_energy(out) / max(high_frequency_energy(image), 1e-12)
            numbers = "[" + ", ".join("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in k.tolist()) + "]"
            rows.append([image_name, source, name, wandb.Image(kernel_picture(k), caption=name), numbers,
                         wandb.Image(to_uint8(out), caption=f"{image_name} * {name}"),
                         *(round(gains[d], 4) for d in DIRECTIONS), round(ratios[name], 4),
                         round(float(out.mean() - image.mean()), 6)])
        return rows, ratios

    def payload(self, images: Mapping[str, torch.Tensor], kernels: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        rows = [r for name, img in images.items() for r in self.rows(name, img, kernels)[0]]
        return {self.key: wandb.Table(columns=FILTER_COLUMNS, data=rows)}


# Detection: boxes and masks are W&B layers over the untouched picture (toggle, filter by score);
# each picture is one PNG that every epoch refers to, so W&B (content-hashed) uploads it once.
MAX_BOXES = 30
LABELS = {1: "person"}


def _boxes(boxes: torch.Tensor, classes: torch.Tensor | None, scores: torch.Tensor | None = None) -> dict[str, Any]:
    data = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()[:MAX_BOXES]):
        cls = int(classes[i]) if classes is not None else 1
        item: dict[str, Any] = {"position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
                                "domain": "pixel", "class_id": cls, "box_caption": LABELS.get(cls, str(cls))}
        if scores is not None:
            item.update(box_caption=f"{item['box_caption']} {float(scores[i]):.2f}", scores={"score": float(scores[i])})
        data.append(item)
    return {"box_data": data, "class_labels": LABELS}


def annotated_image(picture: str | np.ndarray, output: Mapping[str, torch.Tensor],
                    target: Mapping[str, torch.Tensor] | None = None, caption: str | None = None) -> wandb.Image:
    """A picture (path or uint8 array) with torchvision-format boxes and masks (scoring >= 0.5) as W&B layers."""
    output = {k: v.detach().cpu() for k, v in output.items()}
    boxes = {"predictions": _boxes(output["boxes"], output.get("labels"), output["scores"])}
    if target is not None:
        boxes["ground_truth"] = _boxes(target["boxes"].cpu(), target.get("labels"))
    masks = None
    if "masks" in output:  # the kept detections' soft masks as one label map (1 = the first class)
        chosen = output["masks"][output["scores"] >= 0.5, 0] > 0.5
        masks = {"predictions": {"mask_data": chosen.any(0).numpy().astype(np.uint8), "class_labels": LABELS}}
    return wandb.Image(picture, boxes=boxes, masks=masks, caption=caption)


class _PicturePanel(Panel):
    axis = "detect/step"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.cache = tempfile.TemporaryDirectory(prefix="dlhw-pictures-")  # cleanup() once W&B copied the pictures
        self._paths: dict[str, str] = {}

    def picture(self, key: str, pixels: np.ndarray) -> str:
        """The PNG of picture ``key``, written once: every later reference reuses the file."""
        if key not in self._paths:
            self._paths[key] = f"{self.cache.name}/{len(self._paths):04d}.png"
            Image.fromarray(pixels).save(self._paths[key])
        return self._paths[key]


class DetectionTable(_PicturePanel):
    """``detect/predictions``: one incremental table of images with ground-truth and predicted boxes and masks."""

    key = "detect/predictions"
    takes_step = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.table = wandb.Table(columns=["epoch", "image_id", "image", "gt_people", "pred_people@0.5", "mean_score"],
                                 log_mode="INCREMENTAL")

    def payload(self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]],
                outputs: Sequence[Mapping[str, torch.Tensor]], step: int) -> dict[str, Any]:
        for i, (image, target, output) in enumerate(zip(images, targets, outputs)):
            image_id = int(target["image_id"]) if "image_id" in target else i
            path = self.picture(f"image-{image_id}", to_uint8(image))
            counts = people_counts(output["scores"].detach().cpu())
            self.table.add_data(step, image_id, annotated_image(path, output, target), len(target["boxes"]),
                                counts["people@0.5"], counts["mean_score"])
        return {self.key: self.table}


PHOTO_COLUMNS = ["model", "photo", *(f"people@{t}" for t in THRESHOLDS), "mean_score", "inference_ms"]


class PhotoComparison(_PicturePanel):
    """``detect/photo``: per detector, its boxes (and masks) on the same photo, its counts and inference ms."""

    key = "detect/photo"

    @staticmethod
    def rows(outputs: Mapping[str, Mapping[str, torch.Tensor]],
             inference_ms: Mapping[str, float] | None = None) -> list[list[Any]]:
        """Per model: its label, output and the table's numbers."""
        ms = inference_ms or {}
        return [[label, out, *people_counts(out["scores"].detach().cpu()).values(), ms.get(label)]
                for label, out in outputs.items()]

    def payload(self, photo: np.ndarray, outputs: Mapping[str, Mapping[str, torch.Tensor]],
                inference_ms: Mapping[str, float] | None = None, *, name: str = "photo") -> dict[str, Any]:
        path = self.picture(name, photo)
        data = [[r[0], annotated_image(path, r[1], caption=r[0]), *r[2:]] for r in self.rows(outputs, inference_ms)]
        return {self.key: wandb.Table(columns=PHOTO_COLUMNS, data=data)}
