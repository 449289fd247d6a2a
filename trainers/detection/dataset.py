"""Penn-Fudan pedestrians as the tutorial reads them, and the photo both models run on: downloaded, else generated."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.ops import masks_to_boxes
from torchvision.transforms.functional import to_tensor

from dlhw.core.errors import UsageError
from dlhw.trainers.download import DownloadError, cache_dir, download

URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"  # home page: the folder above
NAME = "PennFudanPed"
IMAGES, MASKS = "PNGImages", "PedMasks"
HOLDOUT = 50  # the tutorial holds out the last 50 images of a fixed permutation


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) integer ids, 0 = background


def _open(path: Path, mode: str | None) -> np.ndarray:
    # mode None keeps the stored values (mask ids, whatever the PNG mode)
    if not path.is_file():
        raise UsageError(f"missing file {path}; every image in {IMAGES}/ needs its mask in {MASKS}/")
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); replace the file or download the dataset again") from None


def read_pennfudan(root: str | Path, limit: int | None = None) -> list[Sample]:
    """Every image of a Penn-Fudan folder with its mask; a missing or unreadable file is a UsageError."""
    root = Path(root)
    image_dir = root / IMAGES
    if not image_dir.is_dir() or not (root / MASKS).is_dir():
        raise UsageError(f"{root} is not a Penn-Fudan folder (it needs {IMAGES}/ and {MASKS}/); "
                         f"pass the unpacked {NAME} folder to --data, or leave --data out to download it")
    paths = sorted(image_dir.glob("*.png"))
    if not paths:
        raise UsageError(f"no PNG images in {image_dir}; pass the unpacked {NAME} folder to --data")
    samples = []
    for path in paths[:limit]:
        image = _open(path, "RGB")
        mask_path = root / MASKS / f"{path.stem}_mask.png"
        mask = _open(mask_path, None).astype(np.int32)
        if mask.shape != image.shape[:2]:
            raise UsageError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}; replace the mask")
        samples.append(Sample(image, mask))
    return samples


def instance_masks(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 binary masks, one per pedestrian id (ids sorted, background dropped)."""
    ids = np.unique(mask[mask != 0])
    return (mask[None] == ids[:, None, None]).astype(np.uint8)


def make_target(masks: np.ndarray, image_id: int) -> dict[str, torch.Tensor]:
    """The tutorial's target for binary instance masks; masks with an empty box are dropped (the models refuse them)."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.uint8).reshape(-1, *masks.shape[-2:])
    tensor = tensor[(tensor.flatten(1) != 0).any(1)]  # masks_to_boxes needs at least one pixel per mask
    boxes = masks_to_boxes(tensor) if len(tensor) else torch.zeros(0, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, tensor = boxes[keep], tensor[keep]
    return {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "masks": tensor,
            "image_id": torch.tensor(image_id), "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)}


class PennFudan(torch.utils.data.Dataset):
    """Float (3, H, W) images in [0, 1] and their targets; ``transform(image, masks)`` augments both, boxes follow."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[..., Any] | None = None) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[idx]
        image, masks = s.image, instance_masks(s.mask)
        if self.transform is not None:
            image, masks = self.transform(image, masks)
        return to_tensor(image), make_target(masks, idx)


class Augment:
    """The tutorial's random horizontal flip, plus optional photometric jitter (image only)."""

    def __init__(self, *, flip: float = 0.5, jitter: float = 0.0, seed: int | None = None) -> None:
        steps: list[A.BasicTransform] = [A.HorizontalFlip(p=flip)]
        if jitter > 0:
            steps.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter, 0.5) / 4,
                                       p=0.8))
        self.pipeline = A.Compose(steps, seed=seed)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(masks) == 0:  # an image without pedestrians is valid; albumentations wants >= 1 mask
            return self.pipeline(image=image)["image"], masks
        out = self.pipeline(image=image, masks=masks)
        return out["image"], np.asarray(out["masks"], dtype=np.uint8)


def split(n: int, seed: int, holdout: int = HOLDOUT) -> tuple[list[int], list[int]]:
    """The tutorial's split: a fixed-seed permutation, the last ``holdout`` indices held out."""
    if not 0 < holdout < n:
        raise UsageError(f"--holdout must be between 1 and {n - 1} for {n} images, got {holdout}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:-holdout], order[-holdout:]


def collate(batch: Sequence[Any]) -> tuple[Any, ...]:
    """Detection batches are lists: images of different sizes cannot be stacked."""
    return tuple(zip(*batch))


def draw_scene(rng: np.random.Generator, height: int, width: int, people: int) -> tuple[np.ndarray, np.ndarray]:
    """A street-like picture (sky, ground, noise) with ``people`` pedestrian figures and their id mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.35, 0.55))
    sky, ground = rng.uniform(120, 230, 3), rng.uniform(50, 140, 3)
    image = np.where((yy < horizon)[..., None], sky, ground).astype(np.float32)
    for _ in range(rng.integers(1, 4)):  # buildings, so the background is not flat
        x0, w = rng.integers(0, width), rng.integers(width // 8, width // 3)
        top = rng.integers(0, horizon)
        image[top:horizon, x0:x0 + w] = rng.uniform(60, 200, 3)
    image += rng.normal(0, 8, image.shape)
    mask = np.zeros((height, width), np.int32)
    for pid in range(1, people + 1):
        h = int(height * rng.uniform(0.35, 0.8))
        w = max(6, int(h * rng.uniform(0.28, 0.4)))
        cx = int(rng.uniform(w / 2, width - w / 2))
        bottom = int(min(height - 1, horizon + rng.uniform(0.2, 1.0) * (height - horizon)))
        top = max(0, bottom - h)
        head = max(3, int(0.13 * h))
        body = (yy >= top + 2 * head) & (yy < top + int(0.6 * h)) & (np.abs(xx - cx) < w / 2)
        legs = (yy >= top + int(0.6 * h)) & (yy < bottom) & (np.abs(np.abs(xx - cx) - w / 4) < w / 6)
        skull = (yy - top - head) ** 2 + (xx - cx) ** 2 < head**2
        image[body] = rng.uniform(0, 255, 3)
        image[legs] = rng.uniform(0, 120, 3)
        image[skull] = rng.uniform(150, 230) * np.array([1.0, 0.8, 0.65])
        mask[body | legs | skull] = pid  # later figures stand in front of earlier ones
    # A pedestrian hidden completely behind later ones has no pixels left; renumber the visible ones.
    visible = [i for i in np.unique(mask) if i]
    relabel = np.zeros(people + 1, np.int32)
    relabel[visible] = np.arange(1, len(visible) + 1)
    return np.clip(image, 0, 255).astype(np.uint8), relabel[mask]


def generate_pennfudan(root: str | Path, n: int = 170, *, seed: int = 0, size: tuple[int, int] = (240, 320)) -> Path:
    """Write ``n`` generated images with 0-4 pedestrians each in the Penn-Fudan layout under ``root``."""
    root = Path(root)
    for folder in (IMAGES, MASKS):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        h, w = (int(side * rng.uniform(0.85, 1.15)) for side in size)
        image, mask = draw_scene(rng, h, w, int(rng.integers(0, 5)))
        Image.fromarray(image).save(root / IMAGES / f"Generated{i:05d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / MASKS / f"Generated{i:05d}_mask.png")
    (root / "GENERATED.txt").write_text("Generated stand-in for Penn-Fudan (synthetic pedestrians); not real data.\n")
    return root


def resolve_data(data: str | None, *, seed: int = 0) -> tuple[Path, str]:
    """The dataset folder and its source: ``data``, else the official zip in the cache, else generated (said so)."""
    if data:
        return Path(data), "penn-fudan"
    cached = cache_dir(NAME)
    if (cached / IMAGES).is_dir():
        return cached, "penn-fudan"
    try:
        archive = download(URL, cache_dir(f"{NAME}.zip"))
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None or not any(n.startswith(f"{NAME}/{IMAGES}/") for n in zf.namelist()):
                archive.unlink()
                raise DownloadError(f"{URL} is not a valid {NAME}.zip (bad entry: {bad}); deleted it")
            zf.extractall(cached.parent)
        return cached, "penn-fudan"
    except (DownloadError, zipfile.BadZipFile) as exc:
        generated = cache_dir(f"{NAME}-generated-seed{seed}")
        if not (generated / "GENERATED.txt").is_file():
            generate_pennfudan(generated, seed=seed)
        print(f"Penn-Fudan unavailable ({exc}); using {generated}: generated pedestrians in the same layout, "
              f"not real data (pass --data DIR to use a local copy)", file=sys.stderr)
        return generated, "generated"


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
        scene = draw_scene(np.random.default_rng(0), 360, 480, 4)[0]
        return Photo("generated_street_scene", scene, "generated street scene (photo unavailable)")
    try:
        return Photo(Path(name).stem, _read(path, shown=url), url)
    except UsageError:
        path.unlink()  # an error page saved under the photo's name would be found in the cache next time
        raise
