"""What the panels show: kernels, filters, feature maps and the IoU slide as pictures, a detector's counts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, 3) uint8; values outside [0, 1] are clipped."""
    x = image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def kernel_picture(k: torch.Tensor) -> np.ndarray:
    """A small kernel as an RGB picture, 24 pixels a weight: blue negative, white zero, red positive."""
    k = k.detach().float().cpu()
    rgb = colormaps["coolwarm"]((k / (float(k.abs().max()) or 1.0) + 1) / 2)[..., :3]  # (kh, kw, 3) in [0, 1]
    return (np.kron(rgb, np.ones((24, 24, 1))) * 255).round().astype(np.uint8)


def grid(tiles: torch.Tensor, side: int, pad: int) -> torch.Tensor:
    """(N, C, h, w) tiles enlarged to ``side`` pixels and stretched to [0, 1], in a square grid with white gaps."""
    from torchvision.utils import make_grid  # here: importing torchvision costs a plugin user seconds at start-up

    tiles = torch.stack([upscale(t, side) for t in tiles.detach().float().cpu()])
    return make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=pad, normalize=True, scale_each=True,
                     pad_value=1.0)[: tiles.shape[1]]


def upscale(image: torch.Tensor, min_side: int) -> torch.Tensor:
    """Enlarge a (C, H, W) picture by a whole factor (pixels stay sharp) until its shorter side is ``min_side``+."""
    factor = math.ceil(min_side / min(image.shape[-2:]))
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def filter_grid(weight: torch.Tensor, cell: int = 24) -> torch.Tensor:
    """Filters (out, in, k, k) as one grid of ``cell``-pixel tiles: in colour with three input channels, else grey."""
    return grid(weight if weight.shape[1] == 3 else weight.reshape(-1, 1, *weight.shape[-2:]), cell, pad=2)


def feature_map_grid(fmap: torch.Tensor, max_maps: int = 16, min_side: int = 96) -> torch.Tensor:
    """The first ``max_maps`` channels of one image's activations (C, h, w) as a grey grid of ``min_side``+ pixels."""
    tiles = fmap[:max_maps].unsqueeze(1)
    per_tile = max(1, math.ceil(min_side / (math.ceil(math.sqrt(len(tiles))) * tiles.shape[-1])))
    return grid(tiles, tiles.shape[-1] * per_tile, pad=1)


THRESHOLDS = (0.5, 0.7)


def people_counts(scores: torch.Tensor) -> dict[str, float]:
    """Detections at each score threshold, and the mean score of those at the lowest one."""
    counts: dict[str, float] = {f"people@{t}": int((scores >= t).sum()) for t in THRESHOLDS}
    kept = scores[scores >= THRESHOLDS[0]]
    counts["mean_score"] = float(kept.mean()) if len(kept) else 0.0
    return counts


MEASURES = {"iou": "IoU", "giou": "GIoU", "diou": "DIoU"}


def slide_figure(x: np.ndarray, values: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                 kinks: Sequence[float], *, dpi: int = 100) -> np.ndarray:
    """Each measure's value (top) and d/dx (bottom) along ``x``, kinks dotted, shaded where dIoU/dx is exactly 0."""
    # A bare Figure on the Agg canvas: no pyplot state, nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(x)
    flat = np.asarray(grads["iou"]) == 0
    fig = Figure(figsize=(7, 5), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name, v in values.items():
        top.plot(x, v, label=MEASURES.get(name, name))
    for name, g in grads.items():
        bottom.plot(x, g, label=f"d{MEASURES.get(name, name)}/dx")
    for ax in (top, bottom):
        ax.fill_between(x, 0, 1, where=flat, transform=ax.get_xaxis_transform(), color="0.9",
                        label="dIoU/dx = 0" if ax is bottom else None)
        for k in kinks:
            ax.axvline(k, color="0.4", linestyle=":", linewidth=1)
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.legend(loc="lower left", fontsize=8)
    top.set(ylabel="value", title="B slides across A along x")
    bottom.set(ylabel="d/dx", xlabel="x (left edge of B)")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
