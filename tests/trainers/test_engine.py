from __future__ import annotations

import math
import time

import pytest

from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback
from dlhw.trainers.engine import Engine, check_finite


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, trainer):
        self.events.append(("fit_start",))

    def on_epoch_start(self, trainer, epoch):
        self.events.append(("epoch_start", epoch))

    def on_batch_end(self, trainer, batch_idx, outputs):
        self.events.append(("batch_end", batch_idx, outputs["loss"]))

    def on_validation_end(self, trainer, epoch, metrics):
        self.events.append(("validation_end", epoch, dict(metrics)))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.events.append(("epoch_end", epoch))

    def on_fit_end(self, trainer):
        self.events.append(("fit_end",))

    def on_exception(self, trainer, exception):
        self.events.append(("exception", type(exception).__name__))

    def on_log(self, trainer, metrics, axis):
        self.events.append(("log", axis, trainer.axis_value(axis), dict(metrics)))


class Counting(Engine):
    def __init__(self, callbacks, epochs=2, fail_at=None):
        super().__init__(callbacks, epochs=epochs, name="count", steps_per_epoch=2)
        self.fail_at = fail_at

    def train_epoch(self, epoch):
        for i in range(2):
            if (epoch, i) == self.fail_at:
                raise RuntimeError("boom")
            loss = 1.0 / (self.global_step + 1)
            self.log({"train/loss": loss})
            self.step_end(i, {"loss": loss})

    def evaluate(self, epoch):
        return {"val/acc": 0.5 + epoch / 10}


def test_event_order_and_axes():
    rec = Recorder()
    started = time.perf_counter()
    summary = Counting([rec]).fit()
    elapsed = time.perf_counter() - started
    kinds = [e[0] for e in rec.events]
    assert kinds == [
        "fit_start",
        "epoch_start", "log", "batch_end", "log", "batch_end", "validation_end", "log", "epoch_end",
        "epoch_start", "log", "batch_end", "log", "batch_end", "validation_end", "log", "epoch_end",
        "fit_end",
    ]
    step_logs = [e for e in rec.events if e[0] == "log" and e[1] == STEP_AXIS]
    assert [e[2] for e in step_logs] == [0, 1, 2, 3]  # logged before the step is counted
    epoch_logs = [e for e in rec.events if e[0] == "log" and e[1] == EPOCH_AXIS]
    assert [e[2] for e in epoch_logs] == [1, 2]
    assert epoch_logs[-1][3] == {"val/acc": pytest.approx(0.6)}
    assert summary["val/acc"] == pytest.approx(0.6)
    assert 0 <= summary["fit_seconds"] <= elapsed + 1e-3


def test_exception_replaces_fit_end_and_is_reraised():
    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        Counting([rec], fail_at=(1, 1)).fit()
    kinds = [e[0] for e in rec.events]
    assert kinds[-1] == "exception" and "fit_end" not in kinds
    assert rec.events[-1] == ("exception", "RuntimeError")
    assert kinds.count("epoch_end") == 1


def test_should_stop_ends_after_the_epoch():
    class Stopper(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            trainer.should_stop = True

    rec = Recorder()
    Counting([rec, Stopper()], epochs=5).fit()
    assert [e[0] for e in rec.events].count("epoch_start") == 1


def test_check_finite_names_every_term():
    check_finite({"a": 1.0, "b": 2.0}, step=3)
    with pytest.raises(FloatingPointError, match=r"step 7: a=1, b=nan"):
        check_finite({"a": 1.0, "b": math.nan}, step=7)


def test_zero_epochs_is_refused():
    with pytest.raises(ValueError, match="epochs"):
        Counting([], epochs=0)


def test_test_metrics_come_after_the_last_epoch_and_before_fit_end():
    class Tested(Counting):
        def test(self):
            return {"test/acc": 0.75}

    class TestSeen(Recorder):
        def on_test_end(self, trainer, metrics):
            self.events.append(("test_end", dict(metrics)))

    rec = TestSeen()
    summary = Tested([rec], epochs=2).fit()
    names = [e[0] for e in rec.events]
    assert names[-3:] == ["log", "test_end", "fit_end"] and names.index("test_end") > names.index("epoch_end")
    assert rec.events[-3] == ("log", EPOCH_AXIS, 2, {"test/acc": 0.75})  # the last epoch's value: never backwards
    assert summary["test/acc"] == 0.75
    plain = Recorder()
    Counting([plain], epochs=1).fit()
    assert "test_end" not in [e[0] for e in plain.events]
