"""Classifier batches resized, augmented and normalised on the device in a few batched operations, not per image."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from dlhw.core.distributed import shard


def epoch_generator(seed: int, epoch: int, device: torch.device, *more: int) -> torch.Generator:
    """A generator on ``device`` whose state depends on ``seed``, ``epoch`` and ``more`` only, well mixed."""
    state = int(np.random.SeedSequence([seed, epoch, *more]).generate_state(1, dtype=np.uint64)[0]) >> 1
    return torch.Generator(device=device).manual_seed(state)


def augment(x: torch.Tensor, *, flips: bool, generator: torch.Generator,
            degrees: float = 10.0, padding: int = 2) -> torch.Tensor:
    """The rotate, flip and pad-and-crop of :func:`trainers.datasets.transforms` on a batch, as one affine map."""
    b, _, _, size = x.shape
    dev = x.device
    angle = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.radians(degrees)
    flip = torch.ones(b, device=dev)
    if flips:
        flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    # In normalised coordinates ([-1, 1] across the image) one pixel is 2 / size.
    shift = (torch.randint(-padding, padding + 1, (b, 2), generator=generator, device=dev).float() * 2 / size)
    cos, sin = angle.cos(), angle.sin()
    linear = torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2)  # (B, 2, 2)
    theta = torch.cat([linear, (linear @ shift.unsqueeze(-1))], -1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeviceBatches:
    """Batches ``(x, y)`` of one split on ``device``, an epoch per ``iter()``; ``dataset``: the per-image view."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, size: int, mean: list[float], std: list[float],
                 batch_size: int, device: torch.device | str, augment: bool = False, flips: bool = False,
                 shuffle: bool = False, seed: int = 0, dataset: torch.utils.data.Dataset | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.device = torch.device(device)
        self.images = torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        self.size, self.batch_size = size, batch_size
        self.augment, self.flips, self.shuffle, self.seed = augment, flips, shuffle, seed
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=self.device))).view(1, -1, 1, 1)
        self.offset = (torch.tensor(mean, device=self.device) / torch.tensor(std, device=self.device)).view(1, -1, 1, 1)
        self.dataset, self.rank, self.world, self.epoch = dataset, rank, world, 0

    def _shard_length(self) -> int:
        n = len(self.labels)
        return math.ceil(n / self.world) if self.shuffle else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        return math.ceil(self._shard_length() / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, self.epoch, self.device)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else None
        if self.world > 1:
            # The order above is the same on every rank; the augmentation draws must not be.
            order = shard(torch.arange(n, device=self.device) if order is None else order, self.rank, self.world,
                          even=self.shuffle)
            gen = epoch_generator(self.seed, self.epoch, self.device, self.rank)
        self.epoch += 1
        for start in range(0, self._shard_length(), self.batch_size):
            idx = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            x = self.images[idx].float()
            if x.shape[-2:] != (self.size, self.size):  # rounded like cv2's INTER_LINEAR on uint8
                x = F.interpolate(x, self.size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
            if self.augment:
                x = augment(x, flips=self.flips, generator=gen)
            yield x.mul_(self.scale).sub_(self.offset), self.labels[idx]
