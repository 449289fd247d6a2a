"""Classification data (digits, CIFAR-10, Fashion-MNIST) as uint8 (N, H, W, C) splits, and their loaders."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset, RandomSampler

from dlhw.core.distributed import ShardedSampler, shard
from dlhw.core.errors import UsageError
from dlhw.core.registry import Registry
from dlhw.trainers.device_data import DeviceBatches
from dlhw.trainers.download import socket_timeout

# The split never depends on --seed, so runs that differ in seed, lambda or lr are compared on the same images.
SPLIT_SEED = 0
VAL_FRACTION = 0.1  # CIFAR-10: 45k / 5k, the course's split
DIGITS_TEST_FRACTION = 0.2


@dataclass
class Splits:
    """uint8 images (N, H, W, C) and int labels for train / val / test, plus what describes them."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    flips: bool  # whether a mirrored image is still a valid example (true for photos, false for digits)

    @property
    def channels(self) -> int:
        return int(self.train[0].shape[-1])

    def without_val(self) -> Splits:
        """Every training image trains and the test set serves as validation: d2l's setting."""
        train = tuple(np.concatenate([t, v]) for t, v in zip(self.train, self.val))
        return replace(self, train=train, val=self.test)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images in [0, 1], from each channel's histogram of byte values."""
        x, v = self.train[0], np.arange(256) / 255.0
        freq = np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(self.channels)]) / x[..., 0].size
        mean = freq @ v
        return mean.tolist(), np.sqrt(np.maximum(freq @ v**2 - mean**2, 1e-12)).tolist()


def _split_off(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[tuple, tuple]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    k = max(1, round(len(x) * fraction))
    held, rest = order[:k], order[k:]
    return (x[rest], y[rest]), (x[held], y[held])


DATASETS: Registry[Splits] = Registry("dataset")


@DATASETS.register("digits")
def load_digits(root: Path, download: bool = False) -> Splits:
    """scikit-learn's bundled 1797 8x8 handwritten digits, a fixed 70/10/20 split."""
    table = np.loadtxt(dataset_path("digits", root), delimiter=",")  # as sklearn's load_digits reads it
    x = np.round(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)[..., None]
    y = table[:, -1].astype(np.int64)
    rest, test = _split_off(x, y, DIGITS_TEST_FRACTION)
    train, val = _split_off(*rest, VAL_FRACTION / (1 - DIGITS_TEST_FRACTION))
    return Splits(train, val, test, [str(i) for i in range(10)], flips=False)


def _read_torchvision(cls: Any, root: Path) -> list[Any] | None:
    try:
        return [cls(str(root), train=train) for train in (True, False)]
    except Exception:  # torchvision's "not found or corrupted", or a file it cannot parse
        return None


def load_torchvision(name: str, cls_name: str, root: Path, download: bool = False) -> Splits:
    """``torchvision.datasets.<cls_name>`` under ``root``, fetched with ``download``; 10% of train is the val split."""
    import torchvision.datasets

    cls, root = getattr(torchvision.datasets, cls_name), Path(root)
    parts = _read_torchvision(cls, root)
    if parts is None and download:
        print(f"downloading {name} to {root} (torchvision, official mirror, MD5-checked)", file=sys.stderr)
        try:
            with socket_timeout():  # an unreachable mirror fails in seconds instead of hanging
                cls(str(root), train=True, download=True)
        except Exception as exc:  # no network, a proxy page, a bad checksum: all mean "no data"
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise UsageError(f"could not download {name} to {root} ({reason}); place the files there yourself and "
                             f"keep --download off, or use --dataset digits") from None
        parts = _read_torchvision(cls, root)
    if parts is None:
        raise UsageError(f"{name} not found under {root} (no intact copy in torchvision.datasets.{cls_name}'s layout); "
                         f"add --download to fetch it, or use --dataset digits (bundled, needs no files)")
    # (N, H, W) grayscale gets its channel axis; CIFAR-10's is a transposed view.
    (x, y), test = ((np.ascontiguousarray(np.asarray(d.data).reshape(*d.data.shape[:3], -1)),
                     np.asarray(d.targets, dtype=np.int64)) for d in parts)
    return Splits(*_split_off(x, y, VAL_FRACTION), test, list(parts[0].classes), flips=True)


DATASETS.register("cifar10")(partial(load_torchvision, "cifar10", "CIFAR10"))
DATASETS.register("fashion-mnist")(partial(load_torchvision, "fashion-mnist", "FashionMNIST"))


def resolve_dataset(name: str, root: Path) -> tuple[str, str]:
    """``auto`` -> cifar10 when its files are under ``root``, else digits; returns (name, why)."""
    if name != "auto":
        return name, "--dataset"
    folder = dataset_path("cifar10", root)  # looked at without importing torchvision (seconds)
    if all((folder / f).is_file() for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        return "cifar10", f"--dataset auto: CIFAR-10 found under {root}"
    return "digits", f"--dataset auto: no CIFAR-10 under {root}, using scikit-learn's bundled digits"


def load(name: str, root: Path, *, download: bool = False) -> Splits:
    return DATASETS.create(name, Path(root), download=download)


def transforms(size: int, mean: list[float], std: list[float], *, augment: bool, flips: bool,
               seed: int | None = None) -> A.Compose:
    """Resize, with ``augment`` the course's rotation, flip (when ``flips``) and padded crop, normalise, CHW tensor."""
    ops: list = [A.Resize(size, size, interpolation=cv2.INTER_LINEAR)]
    if augment:
        ops += [A.Rotate(limit=10, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)]
        if flips:
            ops += [A.HorizontalFlip(p=0.5)]
        ops += [A.PadIfNeeded(size + 4, size + 4, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(size, size)]
    ops += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops, seed=seed)


class ArrayDataset(Dataset):
    """uint8 (N, H, W, C) images and labels through an albumentations pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


@dataclass
class Loaders:
    train: DataLoader | DeviceBatches
    val: DataLoader | DeviceBatches
    test: DataLoader | DeviceBatches
    classes: list[str]
    mean: list[float]
    std: list[float]

    def fixed_batch(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images of ``split`` picked with a fixed seed, without augmentation: the same batch every time."""
        ds: ArrayDataset = getattr(self, split).dataset
        plain = self.val.dataset.transform
        idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(ds))[:n])
        x = torch.stack([plain(image=ds.images[i])["image"] for i in idx])
        return x, torch.as_tensor(ds.labels[idx], dtype=torch.long)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)
        return (x.cpu() * std + mean).clamp(0, 1)


def make_loaders(splits: Splits, *, size: int, batch_size: int, augment: bool, seed: int, workers: int = 0,
                 device: str | torch.device = "cpu", on_device: bool = False, normalize: bool = True, rank: int = 0,
                 world: int = 1) -> Loaders:
    """Loaders resizing to ``size``, on the device or via a DataLoader; ``rank`` of ``world``: its shard of each."""
    mean, std = splits.mean_std() if normalize else ([0.0] * splits.channels, [1.0] * splits.channels)
    plain = transforms(size, mean, std, augment=False, flips=splits.flips)
    train_tf = transforms(size, mean, std, augment=augment, flips=splits.flips, seed=seed + rank)
    kw = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
              pin_memory=torch.device(device).type == "cuda")

    def loader(part: tuple, tf: A.Compose, shuffle: bool) -> DataLoader | DeviceBatches:
        if on_device:
            return DeviceBatches(*part, size=size, mean=mean, std=std, batch_size=batch_size, device=device,
                                 augment=shuffle and augment, flips=splits.flips, shuffle=shuffle, seed=seed,
                                 dataset=ArrayDataset(*part, plain), rank=rank, world=world)
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        ds = ArrayDataset(*part, tf)
        # The loader draws from ``gen`` as shuffle=True would, so its random stream is a single process's.
        sampler = (ShardedSampler(RandomSampler(ds, generator=gen), rank, world) if shuffle else
                   shard(range(len(ds)), rank, world, even=False))
        return DataLoader(ds, sampler=sampler, generator=gen, **kw)

    return Loaders(train=loader(splits.train, train_tf, True), val=loader(splits.val, plain, False),
                   test=loader(splits.test, plain, False), classes=splits.classes, mean=mean, std=std)


def dataset_path(name: str, root: Path) -> Path:
    """The file or folder dataset ``name`` is read from: what its W&B dataset artifact references."""
    if name == "digits":  # found without importing scikit-learn, which takes seconds
        return Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"
    return Path(root) / {"cifar10": "cifar-10-batches-py", "fashion-mnist": "FashionMNIST/raw"}[name]
