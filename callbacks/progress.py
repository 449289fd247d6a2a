"""A rich progress bar with ETA and the latest training metrics, and a closing summary table."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from dlhw.core.events import Callback, EPOCH_AXIS, Loop, is_rank_zero


def report_console(*, stderr: bool = False) -> Console:
    """A console for tables: the terminal's width, or 160 columns when output goes to a file or
    pipe, where rich would otherwise cut tables to 80 columns and truncate model names."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def fmt(value: Any) -> str:
    """A value as the suite prints it in tables and bars: 4 significant digits for a float, "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
        return str(value)
    return f"{float(value) + 0.0:.4g}"  # + 0.0: -0.0 prints as 0


class _LiveMetrics(ProgressColumn):
    """The latest step metrics, formatted when rich redraws (a few times a second), not every step."""

    def __init__(self, live: dict[str, Any], max_metrics: int) -> None:
        super().__init__()
        self.live, self.max_metrics = live, max_metrics

    def render(self, task: Any) -> Text:
        shown = list(self.live.items())[: self.max_metrics]  # a snapshot: the loop keeps updating the dict
        return Text("  ".join(f"{k}={fmt(v)}" for k, v in shown))


class ProgressBar(Callback):
    """One bar per epoch with ETA; live metrics on the right; each epoch's metrics printed as it ends.

    ``refresh_per_second`` is low on purpose: the bar redraws in rich's own thread, so the
    training loop only pays for a counter update.
    """

    def __init__(self, console: Console | None = None, *, max_metrics: int = 4) -> None:
        self.console = console or Console(stderr=True)
        self.max_metrics = max_metrics
        self._progress: Progress | None = None
        self._task: Any = None
        self._live: dict[str, Any] = {}

    def on_fit_start(self, trainer: Loop) -> None:
        if not is_rank_zero():
            return
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  _LiveMetrics(self._live, self.max_metrics), console=self.console, refresh_per_second=4)
        self._progress.start()
        self._task = self._progress.add_task(trainer.name, total=trainer.steps_per_epoch)

    def on_epoch_start(self, trainer: Loop, epoch: int) -> None:
        if self._progress is not None:
            desc = f"{trainer.name} epoch {epoch + 1}/{trainer.epochs}"
            self._live.clear()
            self._progress.reset(self._task, total=trainer.steps_per_epoch, description=desc)

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def on_log(self, trainer: Loop, metrics: Mapping[str, Any], axis: str) -> None:
        if self._progress is None or axis == EPOCH_AXIS:
            return
        self._live.update((k, v) for k, v in metrics.items() if isinstance(v, numbers.Real))

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        if self._progress is not None and metrics:
            shown = "  ".join(f"{k}={fmt(v)}" for k, v in metrics.items() if isinstance(v, numbers.Real))
            self._progress.console.print(f"epoch {epoch + 1}/{trainer.epochs}  {shown}")

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_fit_end(self, trainer: Loop) -> None:
        self._stop()

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        self._stop()


class SummaryTable(Callback):
    """Prints the run's final numbers as one table when the fit ends."""

    def __init__(self, console: Console | None = None, *, title: str | None = None) -> None:
        self.console = console or report_console()
        self.title = title

    def on_fit_end(self, trainer: Loop) -> None:
        if not is_rank_zero():
            return
        table = Table(title=self.title or f"{trainer.name}: summary", show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in trainer.summary.items():
            if isinstance(value, (numbers.Real, str)):
                table.add_row(key, fmt(value))
        self.console.print(table)
