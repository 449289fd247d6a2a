"""The run lifecycle without a training loop: what the plain experiments (filters, IoU, photo) rely on."""

from __future__ import annotations

import time

import pytest

from dlhw.core.events import EPOCH_AXIS, Callback, Session


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, trainer):
        self.events.append(("fit_start",))

    def on_validation_end(self, trainer, epoch, metrics):
        self.events.append(("validation_end", epoch))

    def on_test_end(self, trainer, metrics):
        self.events.append(("test_end",))

    def on_fit_end(self, trainer):
        self.events.append(("fit_end", trainer.exit_code))

    def on_exception(self, trainer, exception):
        self.events.append(("exception", type(exception).__name__))

    def on_log(self, trainer, metrics, axis):
        self.events.append(("log", axis, trainer.axis_value(axis), sorted(metrics)))


@pytest.mark.parametrize("passed, exit_code", [(1.0, 0), (0.0, 1)])
def test_self_check_sets_the_exit_code_before_fit_end(passed, exit_code):
    rec = Events()
    session = Session([rec], name="plain")
    started = time.perf_counter()
    with session.running():
        session.epoch_end(0, {"check/value": 2.0})
        session.test_end({"check/passed": passed})
        session.test_end({})  # no metrics: no event
    assert rec.events == [
        ("fit_start",), ("validation_end", 0), ("log", EPOCH_AXIS, 1, ["check/value"]),
        ("log", EPOCH_AXIS, 1, ["check/passed"]), ("test_end",), ("fit_end", exit_code),
    ]
    assert session.exit_code == exit_code
    assert session.summary["check/value"] == 2.0
    assert 0 <= session.summary["fit_seconds"] <= time.perf_counter() - started + 1e-3


def test_an_error_fires_on_exception_and_goes_on():
    rec = Events()
    session = Session([rec])
    with pytest.raises(KeyError), session.running():
        raise KeyError("image")
    assert rec.events == [("fit_start",), ("exception", "KeyError")]
