"""The filters experiment's 3x3 kernels applied, and their response measured along each direction."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Steps (dy, dx) along which intensity changes, rows growing down: diagonal runs bottom-left to top-right.
DIRECTIONS = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (-1, 1), "antidiagonal": (1, 1)}


def apply_kernel(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Filter a (C, H, W) image with a 3x3 kernel per channel, edges replicated (same size out). The kernels are
    point-symmetric, so ``conv2d``'s cross-correlation is their convolution."""
    c = image.shape[0]
    return F.conv2d(F.pad(image.unsqueeze(0), (1, 1, 1, 1), mode="replicate"), k.to(image).expand(c, 1, 3, 3),
                    groups=c)[0]


def directional_energy(image: torch.Tensor, direction: str) -> float:
    """Mean squared difference between each pixel and its neighbour one step along ``direction``."""
    dy, dx = DIRECTIONS[direction]
    h, w = image.shape[-2:]
    a = image[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    b = image[..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return float(((a - b) ** 2).mean())


def directional_gains(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """RMS gain of the neighbour differences along each direction: >1 sharpened, <1 smoothed."""
    energies = {d: (directional_energy(before, d), directional_energy(after, d)) for d in DIRECTIONS}
    return {d: math.sqrt(e1 / e0) if e0 > 0 else 1.0 for d, (e0, e1) in energies.items()}


def grating(direction: str, size: int = 64, period: float = 4.0) -> torch.Tensor:
    """A (1, size, size) sinusoid in [0, 1] whose intensity changes along ``direction``."""
    dy, dx = DIRECTIONS[direction]
    ys, xs = torch.meshgrid(*[torch.arange(size, dtype=torch.float64)] * 2, indexing="ij")
    phase = 2 * math.pi * (dy * ys + dx * xs) / (period * math.hypot(dy, dx))
    return (0.5 + 0.5 * torch.cos(phase)).float().unsqueeze(0)


def grating_gain(k: torch.Tensor, direction: str, size: int = 64, period: float = 4.0) -> float:
    """How much ``k`` multiplies the contrast of a grating along ``direction`` (border excluded)."""
    g = grating(direction, size, period)
    return float(apply_kernel(g, k)[:, 2:-2, 2:-2].std() / g[:, 2:-2, 2:-2].std())


def high_frequency_energy(image: torch.Tensor, cutoff: float = 0.5) -> float:
    """Spectral energy above ``cutoff`` x Nyquist (radially), summed over channels."""
    x = image.reshape(-1, *image.shape[-2:]).double()
    spec = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).abs().unsqueeze(1) * 2  # 1.0 at Nyquist
    fx = torch.fft.fftfreq(x.shape[-1]).abs().unsqueeze(0) * 2
    mask = torch.sqrt(fy**2 + fx**2) > cutoff
    return float(spec[..., mask].sum())
