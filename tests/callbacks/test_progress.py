from __future__ import annotations

import io

import pytest

from rich.console import Console

from dlhw.callbacks.progress import ProgressBar, SummaryTable
from dlhw.trainers.engine import Engine


class Steps(Engine):
    def __init__(self, callbacks):
        super().__init__(callbacks, epochs=2, name="steps", steps_per_epoch=5)

    def train_epoch(self, epoch):
        for i in range(5):
            self.log({"train/loss": 0.5 - 0.01 * self.global_step})
            self.step_end(i, {})

    def evaluate(self, epoch):
        return {"val/acc": 0.25 * (epoch + 1)}


def _console():
    buf = io.StringIO()
    return buf, Console(file=buf, width=120, force_terminal=False)


def test_progress_counts_steps_and_prints_each_epoch():
    buf, console = _console()
    bar = ProgressBar(console)
    Steps([bar]).fit()
    text = buf.getvalue()
    assert "epoch 1/2  val/acc=0.25" in text and "epoch 2/2  val/acc=0.5" in text
    assert "5/5" in text  # the final bar shows every step of the last epoch
    assert bar._progress is None  # stopped, terminal handed back


def test_progress_stops_on_exception():
    buf, console = _console()
    bar = ProgressBar(console)

    running = []

    class Boom(Steps):
        def evaluate(self, epoch):
            running.append(bar._progress is not None)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Boom([bar]).fit()
    assert running == [True] and bar._progress is None


def test_summary_table_lists_final_metrics():
    buf, console = _console()
    Steps([SummaryTable(console)]).fit()
    text = buf.getvalue()
    assert "steps: summary" in text and "val/acc" in text and "0.5" in text
