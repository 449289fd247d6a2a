"""A rich progress bar with ETA and the latest training metrics, and a closing summary table."""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from dlhw.core.events import EPOCH_AXIS, Callback, Session, is_rank_zero


def report_console(*, stderr: bool = False) -> Console:
    """A console for tables, at least 160 columns wide into a file or pipe (rich's 80 would truncate names)."""
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


def console_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table, the first column left-aligned, values through :func:`fmt`, None as n/a."""
    table = Table(columns[0], *(Column(c, justify="right") for c in columns[1:]), title=title)
    for row in rows:
        table.add_row(*("n/a" if v is None else fmt(v) for v in row))
    return table


def _metrics(items: Any) -> str:
    return "  ".join(f"{k}={fmt(v)}" for k, v in items if isinstance(v, numbers.Real))


class ProgressBar(Callback):
    """One bar per epoch with ETA and the latest step metrics; each epoch's metrics printed as it ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._live: dict[str, Any] = {}
        self._steps, self._shown = 0, 0.0  # steps not yet handed to the bar, and when it last got some

    def on_fit_start(self, trainer: Session) -> None:
        if not is_rank_zero():
            return
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  TextColumn("{task.fields[metrics]}", markup=False), console=self.console,
                                  refresh_per_second=4, auto_refresh=self.console.is_terminal)
        self._progress.start()
        self._task = self._progress.add_task(trainer.name, total=trainer.steps_per_epoch, metrics="")

    def on_epoch_start(self, trainer: Session, epoch: int) -> None:
        if self._progress is not None:
            self._live.clear()
            self._progress.reset(self._task, total=trainer.steps_per_epoch, metrics="",
                                 description=f"{trainer.name} epoch {epoch + 1}/{trainer.epochs}")

    def on_batch_end(self, trainer: Session, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        if self._progress is not None:
            self._steps += 1
            if time.monotonic() - self._shown >= 0.25:  # as often as the bar redraws
                self._advance()

    def _advance(self) -> None:
        live = [(k, v) for k, v in self._live.items() if isinstance(v, numbers.Real)][:4]
        self._progress.update(self._task, advance=self._steps, metrics=_metrics(live))
        self._steps, self._shown = 0, time.monotonic()

    def on_log(self, trainer: Session, metrics: Mapping[str, Any], axis: str) -> None:
        if self._progress is not None and axis != EPOCH_AXIS:
            self._live.update(metrics)  # numbers picked out when the bar gets its steps

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        if self._progress is not None:
            self._advance()
            if metrics:
                self._progress.console.print(f"epoch {epoch + 1}/{trainer.epochs}  {_metrics(metrics.items())}")

    def on_fit_end(self, trainer: Session) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        self.on_fit_end(trainer)


class SummaryTable(Callback):
    """Prints the run's final numbers as one table when the fit ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or report_console()

    def on_fit_end(self, trainer: Session) -> None:
        if not is_rank_zero():
            return
        rows = [(key, value) for key, value in trainer.summary.items() if isinstance(value, (numbers.Real, str))]
        self.console.print(console_table(f"{trainer.name}: summary", ["metric", "value"], rows))
