"""Learned filters and feature maps as pictures: (C, H, W) float arrays in [0, 1]. No W&B here."""

from __future__ import annotations

import math

import torch

from dlhw.viz.images import grid


def upscale(image: torch.Tensor, min_side: int) -> torch.Tensor:
    """Enlarge a (C, H, W) picture by a whole factor (nearest neighbour, so pixels stay sharp)
    until its shorter side is at least ``min_side``; larger pictures are returned as they are."""
    factor = math.ceil(min_side / min(image.shape[-2:]))
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def filter_grid(weight: torch.Tensor, cell: int = 24) -> torch.Tensor:
    """First-layer filters (out, in, k, k) as one grid, each filter stretched to [0, 1].

    With three input channels a filter is shown as a colour patch, otherwise each input channel's
    kernel is its own grey tile. Every kernel is enlarged to ``cell`` pixels first, so 3x3 kernels
    are visible.
    """
    w = weight.detach().float().cpu()
    tiles = w if w.shape[1] == 3 else w.reshape(-1, 1, *w.shape[-2:])
    tiles = torch.stack([upscale(t, cell) for t in tiles])
    return grid(tiles, ncols=int(math.ceil(math.sqrt(len(tiles)))), pad=2)


def feature_map_grid(fmap: torch.Tensor, max_maps: int = 16, min_side: int = 96) -> torch.Tensor:
    """The first ``max_maps`` channels of one image's activations (C, h, w) as a grey grid,
    each channel stretched to [0, 1] on its own and enlarged so the grid is at least ``min_side``."""
    tiles = fmap[:max_maps].detach().float().cpu().unsqueeze(1)
    ncols = int(math.ceil(math.sqrt(len(tiles))))
    per_tile = max(1, math.ceil(min_side / (ncols * tiles.shape[-1])))
    tiles = torch.stack([upscale(t, tiles.shape[-1] * per_tile) for t in tiles])
    return grid(tiles, ncols=ncols, pad=1)
