"""Tensors to pictures: uint8 arrays ready for ``wandb.Image`` or PNG files. No W&B here."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, 3) uint8; values outside [0, 1] are clipped."""
    x = image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def kernel_picture(k: torch.Tensor, cell: int = 24, cmap: str = "coolwarm") -> np.ndarray:
    """A small kernel as an RGB picture: blue negative, white zero, red positive, one block per weight.

    The colour scale is symmetric around zero so the sign of each weight is read at a glance.
    """
    k = k.detach().float().cpu()
    span = float(k.abs().max()) or 1.0
    rgb = colormaps[cmap]((k / span + 1) / 2)[..., :3]  # (kh, kw, 3) in [0, 1]
    big = np.kron(rgb, np.ones((cell, cell, 1)))
    return (big * 255).round().astype(np.uint8)


def normalise_map(fmap: torch.Tensor) -> torch.Tensor:
    """Stretch one feature map or filter to [0, 1] for display (constant maps become 0.5)."""
    lo, hi = fmap.min(), fmap.max()
    return (fmap - lo) / (hi - lo) if hi > lo else torch.full_like(fmap, 0.5)


def grid(tiles: torch.Tensor, ncols: int | None = None, pad: int = 1) -> torch.Tensor:
    """Lay out (N, C, h, w) tiles, each stretched to [0, 1], in a grid with white gaps -> (C, H, W)."""
    n, c, h, w = tiles.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    out = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[:, y : y + h, x : x + w] = normalise_map(tiles[i].float())
    return out
