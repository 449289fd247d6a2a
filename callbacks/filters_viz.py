"""The filters experiment's tables: every kernel on every photo, and the kernels' checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import wandb

from dlhw.callbacks.panels import FILTER_COLUMNS, FilterTable
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback, Loop
from dlhw.viz.kernels import DIRECTIONS


class FilterTables(Callback):
    """Per photo (step), ``image/NAME/hf_ratio/FILTER``; at the epoch's end ``filters/outputs``, the
    :class:`~dlhw.callbacks.panels.FilterTable` of every photo, and ``filters/checks``: each
    kernel's gain on gratings per direction, its high-frequency ratio on noise and its verdict."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        name = outputs["image_name"]
        rows, ratios = FilterTable.rows(name, outputs["image"], outputs["kernels"])
        self.rows += rows
        trainer.log({f"image/{name}/hf_ratio/{k}": v for k, v in ratios.items()}, axis=STEP_AXIS)

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        checks = trainer.results["checks"]
        columns = ["filter", *(f"grating_gain_{d}" for d in DIRECTIONS), "noise_hf_ratio", "constant_max_error",
                   "passed"]
        rows = [[name, *(round(per_dir[d], 4) for d in DIRECTIONS), round(checks.hf_ratio[name], 4),
                 checks.constant_error[name], checks.passed(name)] for name, per_dir in checks.gains.items()]
        trainer.log({"filters/outputs": wandb.Table(columns=FILTER_COLUMNS, data=self.rows),
                     "filters/checks": wandb.Table(columns=columns, data=rows)}, axis=EPOCH_AXIS)
        self.rows = []
