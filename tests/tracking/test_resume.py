"""Which checkpoint ``--resume`` means, and the line that continues a stopped run."""

from __future__ import annotations

import os
import shlex

import dlhw.tracking.resume as resume
from dlhw.tracking.resume import resolve_resume, resume_command


def _touch(path, when):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (when, when))


def test_auto_takes_the_newest_unfinished_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(resume, "read_checkpoint", lambda p: {"callbacks": {}})
    ckpts = tmp_path / "checkpoints"
    _touch(ckpts / "alexnet-a" / "last.pt", 100)
    _touch(ckpts / "alexnet-b" / "last.pt", 300)
    _touch(ckpts / "alexnet-b" / "finished.pt", 300)  # ran to its end: nothing to resume
    _touch(ckpts / "alexnet-c" / "last.pt", 200)
    _touch(ckpts / "detect-x" / "option1" / "last.pt", 400)  # another command's
    assert resolve_resume("auto", tmp_path, "alexnet-*/last.pt").path == ckpts / "alexnet-c" / "last.pt"
    assert resolve_resume("auto", tmp_path, "*/option*/last.pt").path == ckpts / "detect-x" / "option1" / "last.pt"


def test_auto_without_a_checkpoint_starts_afresh(tmp_path, capsys):
    # A sweep trial killed before its first checkpoint must still run.
    assert resolve_resume("auto", tmp_path, "alexnet-*/last.pt") is None
    assert "starting afresh" in capsys.readouterr().err
    assert resolve_resume(None, tmp_path, "alexnet-*/last.pt") is None


def test_the_resume_command_replaces_an_earlier_resume(monkeypatch):
    argv = ["alexnet", "--out", "my runs", "--resume", "auto", "--epochs", "3", "--resume=old.pt"]
    monkeypatch.setattr("sys.argv", ["launch.py", *argv])
    line = resume_command("my runs/checkpoints/a/last.pt")
    assert shlex.split(line)[1:] == ["launch.py", "alexnet", "--out", "my runs", "--epochs", "3",
                                     "--resume", "my runs/checkpoints/a/last.pt"]


def test_auto_in_a_sweep_trial_takes_only_its_own_w_and_b_runs_checkpoint(tmp_path, monkeypatch, capsys):
    # Trials under `wandb agent` share --out: the newest checkpoint may be another trial's.
    monkeypatch.setattr(resume, "read_checkpoint",
                        lambda p: {"callbacks": {"WandbLogger": {"run_id": p.read_text()}}})
    ckpts = tmp_path / "checkpoints"
    for name, run_id, when in (("alexnet-a", "mine", 100), ("alexnet-b", "theirs", 200)):
        _touch(ckpts / name / "last.pt", when)
        (ckpts / name / "last.pt").write_text(run_id)
        os.utime(ckpts / name / "last.pt", (when, when))
    monkeypatch.setenv("WANDB_RUN_ID", "mine")
    assert resolve_resume("auto", tmp_path, "alexnet-*/last.pt").path == ckpts / "alexnet-a" / "last.pt"
    monkeypatch.setenv("WANDB_RUN_ID", "new-trial")
    assert resolve_resume("auto", tmp_path, "alexnet-*/last.pt") is None
    assert "no unfinished checkpoint of W&B run new-trial" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_RUN_ID")
    assert resolve_resume("auto", tmp_path, "alexnet-*/last.pt").path == ckpts / "alexnet-b" / "last.pt"
