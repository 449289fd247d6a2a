"""The background checkpoint writer: what it writes is the state at submit time, atomically, and
its failures reach the training thread."""

from __future__ import annotations

import pytest
import torch

from dlhw.core.files import BackgroundWriter, CheckpointError


def test_the_file_holds_the_state_at_submit_even_if_training_goes_on(tmp_path):
    w = torch.nn.Parameter(torch.ones(1000))
    writer = BackgroundWriter()
    state = {"w": w, "epoch": 1}
    writer.submit(state, tmp_path / "last.pt", also=[(state, tmp_path / "best.pt")])
    with torch.no_grad():
        w.mul_(0)  # the next epoch changes the weights in place while the write may still run
    writer.wait()
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name)
        assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(1000))


def test_a_later_last_leaves_best_as_it_was(tmp_path):
    writer = BackgroundWriter()
    writer.submit({"epoch": 1}, tmp_path / "last.pt", also=[({"epoch": 1}, tmp_path / "best.pt")])
    writer.submit({"epoch": 2}, tmp_path / "last.pt")
    writer.wait()
    assert torch.load(tmp_path / "last.pt")["epoch"] == 2
    assert torch.load(tmp_path / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary files left


def test_a_failed_write_surfaces_and_keeps_the_old_file(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "last.pt")
    writer = BackgroundWriter()
    writer.submit({"epoch": 2, "bad": lambda: None}, tmp_path / "last.pt")  # a lambda cannot be pickled
    with pytest.raises(CheckpointError, match="last.pt"):
        writer.wait()
    assert torch.load(tmp_path / "last.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    writer.wait()  # reported once


def test_the_next_submit_reports_the_previous_failure(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = BackgroundWriter()
    writer.submit({"epoch": 1}, blocker / "last.pt")
    with pytest.raises(CheckpointError, match="not-a-folder"):
        writer.submit({"epoch": 2}, tmp_path / "last.pt")
