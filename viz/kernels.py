"""Hand-designed 3x3 filters, how they are applied, and how their directional response is measured.

A note on orientation. ``torch.nn.functional.conv2d`` computes a cross-correlation: output pixel
``(i, j)`` is ``sum_{u,v} k[u, v] * x[i + u - 1, j + v - 1]``, the kernel laid on the image as
written, not flipped. A true convolution would rotate the kernel by 180 degrees first. Every
kernel here is symmetric under that rotation (``k == k.flip(0, 1)``), so the two operations agree
and the directions below mean what the picture of the kernel shows. An asymmetric kernel (a
one-sided derivative, say) would have its sign flipped by the difference.

Directions are named after the axis along which a filter looks at neighbours, which is the
direction of the intensity change it amplifies: ``sharpen_horizontal`` compares a pixel with its
left and right neighbours, so it boosts intensity that changes along x (vertical edges, vertical
stripes) and leaves horizontal stripes alone. Image rows grow downwards, so "bottom-left to
top-right" joins kernel cells ``[2, 0]`` and ``[0, 2]``.

Every kernel sums to 1, so a constant image passes unchanged; borders are padded by replicating
the edge pixels, which keeps that true at the border too (zero padding would darken the frame).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlhw.core.registry import Registry

KERNELS: Registry[torch.Tensor] = Registry("filter")

# Unit steps (dy, dx) in image coordinates (rows grow downwards) for each named direction.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "horizontal": (0, 1),
    "vertical": (1, 0),
    "diagonal": (-1, 1),  # bottom-left to top-right
    "antidiagonal": (1, 1),  # top-left to bottom-right
}


def _line_sharpen(dy: int, dx: int) -> torch.Tensor:
    # 1D unsharp mask along one line through the centre: centre 3, the two neighbours -1.
    # Its frequency response along that line is 3 - 2 cos(w): 1 for flat regions (w = 0),
    # 5 for the finest alternation (w = pi); across the line it is 1 everywhere.
    k = torch.zeros(3, 3)
    k[1, 1] = 3.0
    k[1 + dy, 1 + dx] = -1.0
    k[1 - dy, 1 - dx] = -1.0
    return k


@KERNELS.register()
def box_blur() -> torch.Tensor:
    """Mean of the 3x3 neighbourhood: averaging cancels pixel-to-pixel variation (response
    (1 + 2 cos w) / 3 per axis, zero at w = 2pi/3) while flat regions keep their value."""
    return torch.full((3, 3), 1.0 / 9.0)


@KERNELS.register()
def gaussian_blur() -> torch.Tensor:
    """Binomial [1, 2, 1]/4 outer product, a sampled Gaussian (sigma ~ 0.85 px): it weights near
    neighbours more, so it blurs without the box filter's ringing, and its response
    (1 + cos w) / 2 per axis falls monotonically to exactly 0 at the finest alternation."""
    b = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    return torch.outer(b, b)


@KERNELS.register()
def sharpen_horizontal() -> torch.Tensor:
    """Sharpens along x: centre minus left and right neighbours, added to the pixel. A pixel
    brighter than its horizontal neighbours gets brighter still, so vertical edges gain contrast
    (gain up to 5 at the finest horizontal alternation) and horizontal edges are untouched."""
    return _line_sharpen(*DIRECTIONS["horizontal"])


@KERNELS.register()
def sharpen_vertical() -> torch.Tensor:
    """Sharpens along y: the same 1D unsharp mask on the pixels above and below, so horizontal
    edges gain contrast and vertical edges are untouched."""
    return _line_sharpen(*DIRECTIONS["vertical"])


@KERNELS.register()
def sharpen_diagonal() -> torch.Tensor:
    """Sharpens along the bottom-left to top-right diagonal: the neighbours at kernel cells [2, 0]
    and [0, 2] are subtracted, so intensity that changes along that diagonal (edges running from
    top-left to bottom-right) gains contrast, while changes along the other diagonal do not."""
    return _line_sharpen(*DIRECTIONS["diagonal"])


def kernel(name: str) -> torch.Tensor:
    """The 3x3 kernel registered as ``name``."""
    return KERNELS.create(name)


def apply_kernel(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Filter a (C, H, W) or (N, C, H, W) float image with a 3x3 kernel, each channel on its own.

    Borders: edge pixels replicated by one pixel, so the output has the input's size.
    """
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    c = x.shape[1]
    weight = k.to(x).expand(c, 1, 3, 3)
    # groups=c applies the same kernel to each channel separately (no mixing of R, G and B).
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=c)
    return y if batched else y.squeeze(0)


def directional_energy(image: torch.Tensor, direction: str) -> float:
    """Mean squared difference between each pixel and its neighbour one step along ``direction``."""
    dy, dx = DIRECTIONS[direction]
    x = image.reshape(-1, *image.shape[-2:])
    h, w = x.shape[-2:]
    a = x[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    b = x[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return float(((a - b) ** 2).mean())


def directional_gains(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """RMS gain of the neighbour differences along each direction: >1 sharpened, <1 smoothed."""
    gains = {}
    for d in DIRECTIONS:
        e0 = directional_energy(before, d)
        gains[d] = math.sqrt(directional_energy(after, d) / e0) if e0 > 0 else 1.0
    return gains


def grating(direction: str, size: int = 64, period: float = 4.0) -> torch.Tensor:
    """A (1, size, size) sinusoid in [0, 1] whose intensity changes along ``direction``."""
    dy, dx = DIRECTIONS[direction]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    phase = 2 * math.pi * (dy * ys + dx * xs) / (period * math.hypot(dy, dx))
    return (0.5 + 0.5 * torch.cos(phase)).float().unsqueeze(0)


def grating_gain(k: torch.Tensor, direction: str, size: int = 64, period: float = 4.0) -> float:
    """How much ``k`` multiplies the contrast of a grating along ``direction`` (border excluded)."""
    g = grating(direction, size, period)
    out = apply_kernel(g, k)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    return float(out[inner].std() / g[inner].std())


def high_frequency_energy(image: torch.Tensor, cutoff: float = 0.5) -> float:
    """Spectral energy above ``cutoff`` x Nyquist (radially), summed over channels."""
    x = image.reshape(-1, *image.shape[-2:]).double()
    spec = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).abs().unsqueeze(1) * 2  # 1.0 at Nyquist
    fx = torch.fft.fftfreq(x.shape[-1]).abs().unsqueeze(0) * 2
    mask = torch.sqrt(fy**2 + fx**2) > cutoff
    return float(spec[..., mask].sum())
