"""A W&B table that grows by one block of rows per epoch."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import wandb

# W&B's incremental log mode (wandb >= 0.19.x): each log uploads only the rows added since the
# last one, and the dashboard shows every epoch's rows in one table view.
INCREMENTAL = "log_mode" in inspect.signature(wandb.Table.__init__).parameters


class EpochTable:
    """Rows added each epoch, logged under one key: one incremental table where the installed
    wandb has that mode, else a new table of the epoch's rows each time (as before)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._table: wandb.Table | None = wandb.Table(columns=self.columns, log_mode="INCREMENTAL") if INCREMENTAL else None

    def with_rows(self, rows: Sequence[Sequence[object]]) -> wandb.Table:
        """The table to log after adding ``rows``."""
        if self._table is None:
            return wandb.Table(columns=self.columns, data=[list(r) for r in rows])
        for row in rows:
            self._table.add_data(*row)
        return self._table
