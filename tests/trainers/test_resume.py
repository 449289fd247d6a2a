"""Stopping a fit on a signal and resuming it from its checkpoint gives the uninterrupted run,
bit for bit; a checkpoint that does not fit the run is refused in one line."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from dlhw.callbacks.checkpoint import BEST, FINISHED, LAST, Checkpoint
from dlhw.core.errors import UsageError
from dlhw.core.events import Callback, Stopped
from dlhw.tracking.resume import check_resumable, read_checkpoint
from dlhw.trainers.engine import CHECKPOINT_FORMAT, Engine, callback_keys


class Noisy(Engine):
    """A tiny regression whose every step draws from torch's, NumPy's and Python's global
    generators and from a data generator of its own, with dropout: any state a resume failed to
    restore would change the weights."""

    def __init__(self, callbacks, epochs=3, steps=4):
        super().__init__(callbacks, epochs=epochs, name="noisy", steps_per_epoch=steps, config={"lr": 0.1, "epochs": epochs})
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.data = np.random.default_rng(1)
        self.steps = steps

    def data_generators(self):
        return {"data": self.data}

    def train_epoch(self, epoch):
        batches = (torch.as_tensor(self.data.normal(size=(8, 4)), dtype=torch.float32) for _ in range(self.steps))
        for i, x in self.epoch_batches(batches):
            noise = float(np.random.normal()) + random.random()
            loss = (self.model(x).squeeze(1) - x.sum(1) - noise).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.log({"train/loss": loss.item()})
            self.step_end(i, {"loss": loss.item()})

    def evaluate(self, epoch):
        return {"val/score": float(self.model[0].weight.detach().sum())}


class Counter(Callback):
    """A callback with state: the steps it saw."""

    def __init__(self):
        self.seen = 0

    def on_batch_end(self, trainer, batch_idx, outputs):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class SignalAt(Callback):
    """Sends ``signum`` to this process after global step ``step``, as a scheduler would."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_batch_end(self, trainer, batch_idx, outputs):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _seed():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)


# 4 steps per epoch: SIGINT after the 4th step stops before that epoch's evaluation.
@pytest.mark.parametrize("signum, step, position", [(signal.SIGTERM, 6, (1, 2)), (signal.SIGINT, 4, (0, 4))])
def test_a_stopped_and_resumed_fit_equals_an_uninterrupted_one(tmp_path, signum, step, position):
    _seed()
    whole = Noisy([Counter(), Counter(), Checkpoint(tmp_path / "a", monitor="val/score")])
    whole.fit()

    _seed()
    first = Noisy([Counter(), Counter(), Checkpoint(tmp_path / "b", monitor="val/score"), SignalAt(step, signum)])
    with pytest.raises(Stopped) as stop:
        first.fit()
    assert stop.value.exit_code == 128 + signum
    assert stop.value.checkpoint == str(tmp_path / "b" / LAST)
    state = read_checkpoint(tmp_path / "b" / LAST)
    # Stopped at the end of the step that was running: epochs done, steps into the next one.
    assert (state["epoch"], state["batch"], state["global_step"]) == (*position, step)
    assert state["format"] == CHECKPOINT_FORMAT and not (tmp_path / "b" / FINISHED).exists()

    _seed()  # whatever the new process's seed, the checkpoint's generators win
    torch.manual_seed(99)
    resumed = Noisy([Counter(), Counter(), Checkpoint(tmp_path / "b", monitor="val/score")])
    resumed.load_checkpoint_state(state)
    resumed.fit()

    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.summary["val/score"] == whole.summary["val/score"]
    assert resumed.summary["best/val/score"] == whole.summary["best/val/score"]
    # Both instances of one callback class kept their own (equal) counts across the stop.
    assert [cb.seen for cb in resumed.callbacks[:2]] == [12, 12]
    assert (tmp_path / "b" / FINISHED).exists()


def test_callbacks_of_one_class_get_separate_keys():
    a, b, c = Counter(), Checkpoint("x", monitor="m"), Counter()
    assert [k for k, _ in callback_keys([a, b, c])] == ["Counter", "Checkpoint", "Counter#2"]


def test_the_uploaded_best_checkpoint_holds_weights_only(tmp_path):
    Noisy([Checkpoint(tmp_path, monitor="val/score")], epochs=1).fit()
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert set(best["trainer"]) == {"model"}
    assert "optimizer" in read_checkpoint(tmp_path / LAST)["trainer"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    Noisy([Checkpoint(folder, monitor="val/score")], epochs=1).fit()
    return folder / LAST


def test_a_truncated_checkpoint_is_refused_in_one_line(saved, tmp_path):
    cut = tmp_path / LAST
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(UsageError, match=r"cannot be read .*truncated or not a checkpoint") as err:
        read_checkpoint(cut)
    assert "\n" not in str(err.value) and str(cut) in str(err.value)


def test_a_newer_format_is_refused(saved, tmp_path):
    state = torch.load(saved, weights_only=True)
    state["format"] = CHECKPOINT_FORMAT + 1
    torch.save(state, tmp_path / LAST)
    with pytest.raises(UsageError, match=f"format {CHECKPOINT_FORMAT + 1}, newer than"):
        read_checkpoint(tmp_path / LAST)


def test_best_pt_is_not_resumable(saved):
    with pytest.raises(UsageError, match="not a resumable checkpoint"):
        read_checkpoint(saved.with_name(BEST))


def test_a_checkpoint_of_another_model_or_config_is_refused(saved):
    state = read_checkpoint(saved)
    with pytest.raises(UsageError, match="from a noisy run, not alexnet"):
        check_resumable(state, saved, name="alexnet", config=state["config"])
    with pytest.raises(UsageError, match=r"lr=0.1 there, 0.2 now"):
        check_resumable(state, saved, name="noisy", config={**state["config"], "lr": 0.2})
    # More epochs are allowed (train longer); fewer than done are not.
    check_resumable(state, saved, name="noisy", config={**state["config"], "epochs": 5})
    with pytest.raises(UsageError, match="too few to resume"):
        check_resumable(state, saved, name="noisy", config={**state["config"], "epochs": 0})


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("truncated", "truncated or not a checkpoint"),
    ("other model", "variant='course' there, 'd2l' now"),
])
def test_launch_refuses_a_bad_checkpoint_with_one_line_and_exit_2(saved, tmp_path, capsys, damage, message):
    from launch import main

    ckpt = tmp_path / "checkpoints" / "alexnet-x" / LAST
    ckpt.parent.mkdir(parents=True)
    state = torch.load(saved, weights_only=True)
    state.update(name="alexnet", config={"variant": "course"})
    if damage == "truncated":
        ckpt.write_bytes(saved.read_bytes()[:1000])
    elif damage == "other model":
        torch.save(state, ckpt)
    before = ckpt.read_bytes() if ckpt.exists() else None
    code = main(["alexnet", "--out", str(tmp_path), "--variant", "d2l", "--resume", str(ckpt), "--wandb-mode", "disabled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("error: "), err
    assert (ckpt.read_bytes() if ckpt.exists() else None) == before  # nothing written over it
