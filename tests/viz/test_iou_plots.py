"""The slide picture: a plain RGB array, with the zero-gradient stretches shaded."""

from __future__ import annotations

import numpy as np

from dlhw.viz.images import slide_figure

SHADE = np.array([229, 229, 229])  # matplotlib's "0.9" grey


def _shaded_pixels(img: np.ndarray) -> int:
    return int((np.abs(img.astype(int) - SHADE).max(axis=2) <= 1).sum())


def test_slide_figure_shades_where_the_iou_gradient_is_zero():
    x = np.linspace(-2, 2, 41)
    values = {"iou": np.clip(1 - np.abs(x), 0, None), "giou": 1 - np.abs(x) / 2}
    slope = np.where(np.abs(x) < 1, -np.sign(x), 0.0)
    img = slide_figure(x, values, {"iou": slope, "giou": -np.sign(x) / 2}, kinks=[-1.0, 0.0, 1.0], dpi=50)
    assert img.dtype == np.uint8 and img.shape == (250, 350, 3)
    nowhere_flat = slide_figure(x, values, {"iou": np.ones_like(x), "giou": np.ones_like(x)}, kinks=[], dpi=50)
    # Anti-aliased lines leave a few grey pixels of their own; the shading is thousands.
    assert _shaded_pixels(img) > 10_000 and _shaded_pixels(nowhere_flat) < 500
