"""Both trained detectors on one photo (the Beatles, by default), and the verdict comparing the options."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.transforms.functional import to_tensor

from dlhw.core.errors import UsageError
from dlhw.core.events import Callback
from dlhw.core.session import Session
from dlhw.trainers.detection.dataset import street_scene
from dlhw.trainers.download import DownloadError, cache_dir, download
from dlhw.viz.images import THRESHOLDS, people_counts

# "The Beatles arrive at JFK Airport", 7 February 1964, United Press International; public domain:
# https://commons.wikimedia.org/wiki/File:The_Beatles_arrive_at_JFK_Airport.jpg
BEATLES_URL = "https://upload.wikimedia.org/wikipedia/commons/6/61/The_Beatles_arrive_at_JFK_Airport.jpg"


@dataclass
class Photo:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    source: str


def _read(path: Path, shown: str | None = None) -> np.ndarray:
    # shown: how the user named it (a URL), if not by path
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        why = "what it sent is not an image" if shown else exc
        raise UsageError(f"cannot read image {shown or path} ({why}); pass a PNG or JPEG to --image") from None


def load_photo(image: str | None) -> Photo:
    """``--image`` (a file or URL) or the Beatles photo; only the default one falls back to a generated scene."""
    if image and not image.startswith(("http://", "https://")):
        path = Path(image)
        if not path.is_file():
            raise UsageError(f"image not found: {path}; pass an existing file or a URL to --image")
        return Photo(path.stem, _read(path), f"--image {path}")
    url = image or BEATLES_URL
    name = Path(url.split("?")[0]).name or "photo.jpg"
    try:
        path = download(url, cache_dir("photos", name))
    except DownloadError as exc:
        if image:
            raise UsageError(f"--image {exc}; check the URL, or download the photo and pass its path") from None
        print(f"photo unavailable ({exc}); using a generated street scene instead (not a photo)", file=sys.stderr)
        return Photo("generated_street_scene", street_scene(), "generated street scene (photo unavailable)")
    try:
        return Photo(Path(name).stem, _read(path, shown=url), url)
    except UsageError:
        path.unlink()  # an error page saved under the photo's name would be found in the cache next time
        raise


@torch.inference_mode()
def detect(model: nn.Module, image: torch.Tensor, *, repeats: int = 3) -> tuple[dict[str, torch.Tensor], float]:
    """The model's detections on ``image`` and the median inference time in milliseconds."""
    model.eval()
    device = next(model.parameters()).device
    times, out = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        out = model([image.to(device)])[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return {k: v.cpu() for k, v in out.items()}, float(np.median(times))


def compare_on_photo(photo: Photo, models: Mapping[str, nn.Module], results: Mapping[str, Mapping[str, Any]],
                     callbacks: Iterable[Callback] = (), config: Mapping[str, Any] | None = None) -> Session:
    """Every model on the photo, a step each, counts as the one epoch; ``results``: each label's training summary."""
    session = Session(callbacks, name="detect-photo", config=config, steps_per_epoch=len(models))
    session.results["photo"] = photo
    image = to_tensor(photo.image)
    detections: dict[str, dict[str, Any]] = {}
    with session.running():
        session.fire("on_epoch_start", epoch=0)
        for i, (label, model) in enumerate(models.items()):
            out, ms = detect(model, image)
            row = detections[label] = {**people_counts(out["scores"]), "inference_ms": ms}
            session.step_end(i, {"label": label, "photo": photo, "output": out, **row})
        session.results["verdict"] = verdict(results, detections)
        session.epoch_end(0, {f"photo/{label.split(':')[0].replace(' ', '')}/{k}": v
                              for label, row in detections.items() for k, v in row.items()})
    return session


def verdict(results: Mapping[str, Mapping[str, Any]],
            detections: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and one row per trained model: train and held-out AP, people counted on the photo, s/iter."""
    columns = ["model", "train bbox AP", "held-out bbox AP", "held-out segm AP",
               *(f"people@{t}" for t in THRESHOLDS), "s/iter"]
    rows = []
    for label, summary in results.items():
        det = detections.get(label, {})
        rows.append([label, summary.get("train/bbox_AP"), summary.get("val/bbox_AP"), summary.get("val/segm_AP"),
                     *(det.get(f"people@{t}") for t in THRESHOLDS), summary.get("train/sec_per_iter")])
    return columns, rows
