"""Uploads the filters experiment as W&B tables: one row per (photo, kernel), and the checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import wandb

from core.events import Callback, EPOCH_AXIS, Loop
from viz.images import kernel_picture, to_uint8
from viz.kernels import DIRECTIONS


def _nine_numbers(k: Any) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in k.tolist()) + "]"


class FilterTable(Callback):
    """Collects each photo's outputs as the loop runs and logs two tables at the epoch's end.

    ``filters/outputs``: input | filter | kernel (picture) | kernel (nine numbers) | output |
    gain along each direction | high-frequency energy ratio | mean shift.
    ``filters/checks``: each kernel's gain on generated gratings per direction, its
    high-frequency ratio on noise and whether it passed its check.

    A photo's ``wandb.Image`` is made once and reused in all its rows, so it is stored once.
    """

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        source = wandb.Image(to_uint8(outputs["image"]), caption=outputs["image_name"])
        for r in outputs["results"]:
            self.rows.append(
                [
                    outputs["image_name"],
                    source,
                    r.filter,
                    wandb.Image(kernel_picture(r.kernel), caption=r.filter),
                    _nine_numbers(r.kernel),
                    wandb.Image(to_uint8(r.output), caption=f"{outputs['image_name']} * {r.filter}"),
                    *(round(r.gains[d], 4) for d in DIRECTIONS),
                    round(r.hf_ratio, 4),
                    round(r.mean_shift, 6),
                ]
            )

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        outputs = wandb.Table(
            columns=["image", "input", "filter", "kernel", "kernel_values", "output",
                     *(f"gain_{d}" for d in DIRECTIONS), "hf_energy_ratio", "mean_shift"],
            data=self.rows,
        )
        checks = trainer.checks
        check_rows = []
        for name, per_dir in checks.gains.items():
            check_rows.append(
                [name, *(round(per_dir[d], 4) for d in DIRECTIONS), round(checks.hf_ratio[name], 4),
                 checks.constant_error[name], checks.passed(name)]
            )
        table = wandb.Table(
            columns=["filter", *(f"grating_gain_{d}" for d in DIRECTIONS), "noise_hf_ratio",
                     "constant_max_error", "passed"],
            data=check_rows,
        )
        trainer.log({"filters/outputs": outputs, "filters/checks": table}, axis=EPOCH_AXIS)
        self.rows = []
