"""The IoU slide as a picture: values on top, d/dx below, kinks marked. Arrays in, RGB array out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LABELS = {"iou": "IoU", "giou": "GIoU", "diou": "DIoU"}


def slide_figure(x: np.ndarray, values: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                 kinks: Sequence[float], *, dpi: int = 100) -> np.ndarray:
    """Each measure's value (top) and d/dx (bottom) over the slide position ``x``, kinks dotted, shaded where
    dIoU/dx is exactly 0 (1 - IoU gives an optimiser nothing to follow)."""
    # A bare Figure on the Agg canvas: no pyplot state, no window, nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(x)
    flat = np.asarray(grads["iou"]) == 0
    fig = Figure(figsize=(7, 5), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name, v in values.items():
        top.plot(x, v, label=LABELS.get(name, name))
    for name, g in grads.items():
        bottom.plot(x, g, label=f"d{LABELS.get(name, name)}/dx")
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
