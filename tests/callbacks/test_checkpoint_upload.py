"""When the best checkpoint is announced: each improvement once written (at the next epoch's end,
so the fit never waits on the disk), or once after the last epoch (upload="end")."""

from __future__ import annotations

import pytest

from dlhw.callbacks.checkpoint import Checkpoint
from dlhw.core.events import Callback
from dlhw.trainers.engine import Engine


class Improving(Engine):
    def __init__(self, callbacks):
        super().__init__(callbacks, epochs=3, name="tiny", steps_per_epoch=1)

    def train_epoch(self, epoch):
        self.step_end(0, {})

    def evaluate(self, epoch):
        return {"val/acc": [0.5, 0.9, 0.7][epoch]}


class Saved(Callback):
    def __init__(self):
        self.calls = []

    def on_checkpoint_saved(self, trainer, path, aliases, metadata):
        self.calls.append((trainer.epoch + 1, path.rsplit("/", 1)[-1], sorted(aliases), metadata))


@pytest.mark.parametrize("upload, announced, saved_epochs", [("improved", [2, 3], [1, 2]), ("end", [3], [2])])
def test_when_the_best_checkpoint_is_announced(tmp_path, upload, announced, saved_epochs):
    saved = Saved()
    Improving([Checkpoint(tmp_path, monitor="val/acc", upload=upload), saved]).fit()
    assert [c[0] for c in saved.calls] == announced
    assert [c[3]["epoch"] for c in saved.calls] == saved_epochs
    assert all(c[1:3] == ("best.pt", ["best"]) for c in saved.calls)
    # The metadata is the saved epoch's own, even when announced after a later epoch.
    assert saved.calls[-1][3] == {"epoch": 2, "step": 2, "val/acc": 0.9}


def test_unknown_upload_mode():
    with pytest.raises(ValueError, match="upload"):
        Checkpoint("x", monitor="val/acc", upload="always")
