"""Fault injection on real training processes: killed (SIGKILL) or stopped (SIGTERM) at seeded
random points, resumed with ``--resume auto``, and compared with an uninterrupted run: the same
final metrics, and a W&B history with every step once, in order. Also: the W&B service process
killed mid-fit, which must not stop training. (A stop inside `detect` is in tests/test_launch_detect.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import main
from dlhw.tracking.readback import history, run_summary

ROOT = Path(__file__).resolve().parents[2]
# Tiny on purpose: 2 epochs of 3 steps of 16 digits each, no curvature probe, no feature maps.
ALEXNET = ["alexnet", "--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--device", "cpu",
           "--device-data", "on", "--hessian-every", "0", "--viz-images", "0", "--seed", "3"]
# Metrics compared between the uninterrupted and the resumed run: exact up to float32 printing.
TOLERANCE = 1e-6

pytestmark = pytest.mark.slow


def _start(args: list[str], out: Path, **env: str) -> subprocess.Popen:
    # Its own W&B service, as from a shell: one inherited from this process (WANDB_SERVICE, set
    # when an earlier test started a run here) would outlive the kills and keep writing for it.
    base = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args, "--out", str(out)], cwd=out.parent,
                            env={**base, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _newest_checkpoint_time(out: Path) -> int:
    return max((p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*/**/last.pt")), default=0)


def _wait_for_new_checkpoint(proc: subprocess.Popen, out: Path, since: int, timeout: float = 240) -> None:
    """Until a checkpoint newer than ``since`` is on disk (or the process ended)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and _newest_checkpoint_time(out) <= since:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def _steps_and_epochs(run_dirs: list[Path]) -> tuple[list[tuple[int, float]], dict[str, list[int]]]:
    """(trainer/step, train/loss) of every step record, and per epoch-axis key its epochs, in order."""
    steps, epochs = [], {}
    for run_dir in run_dirs:
        for item in history(run_dir):
            if "train/loss" in item:
                steps.append((int(item["trainer/step"]), item["train/loss"]))
            if "epoch" in item:
                for key in item:
                    if key not in ("epoch",) and not key.startswith("_"):
                        epochs.setdefault(key, []).append(int(item["epoch"]))
    return steps, epochs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference run, in this process: nothing stops it."""
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main([*ALEXNET, "--out", str(out)]) == 0
    return out


def test_alexnet_killed_then_stopped_as_its_last_epoch_ends_resumes_to_the_same_run(uninterrupted, tmp_path,
                                                                                  monkeypatch):
    out = tmp_path / "out"
    # Killed the moment epoch 1's checkpoint is on disk: the fault lands while epoch 2 starts, its
    # write perhaps still going.
    proc = _start(ALEXNET, out)
    _wait_for_new_checkpoint(proc, out, 0)
    proc.send_signal(signal.SIGKILL)
    code, err = _finish(proc)
    assert code == -signal.SIGKILL, err[-2000:]
    # Resumed, then stopped as its last epoch ends: the next process only tests.
    proc = _start(ALEXNET + ["--resume", "auto"], out)
    for line in proc.stderr:
        if line.startswith("epoch 2/2"):
            proc.send_signal(signal.SIGTERM)
            break
    code, err = _finish(proc)
    assert code == -signal.SIGTERM, err[-2000:]  # a stop ends by its signal, not 143
    assert "continue with: " in err and "--resume " in err, err[-2000:]
    # The runner's way, DLHW_RESUME=auto instead of the flag; in this process, as nothing stops it.
    monkeypatch.setenv("DLHW_RESUME", "auto")
    assert main([*ALEXNET, "--out", str(out)]) == 0

    whole_dirs, parts = _run_dirs(uninterrupted), _run_dirs(out)
    assert len({p.name.rsplit("-", 1)[1] for p in parts}) == 1, f"one W&B run id expected: {parts}"
    final, expected = run_summary(parts[-1]), run_summary(whole_dirs[0])
    assert final["exit_code"] == 0
    # The last process only tested, yet its summary holds every number of the run.
    for key in ("test/loss", "test/acc", "train/epoch_loss", "train/epoch_acc", "train/loss", "val/loss"):
        assert final["summary"][key] == pytest.approx(expected["summary"][key], abs=TOLERANCE), key

    steps, epochs = _steps_and_epochs(parts)
    want_steps, want_epochs = _steps_and_epochs(whole_dirs)
    logged = [s for s, _ in steps]
    assert logged == sorted(set(logged)), f"steps repeat or go back: {logged}"
    assert logged == [s for s, _ in want_steps]
    assert [loss for _, loss in steps] == pytest.approx([loss for _, loss in want_steps], abs=TOLERANCE)
    for key in ("val/loss", "train/epoch_loss"):
        assert epochs[key] == want_epochs[key] == [1, 2], key


def _wandb_core(pid: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"wandb-core" in cmdline:
            return int(stat.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the W&B service process through /proc")
def test_training_goes_on_when_the_wandb_service_dies(tmp_path):
    out = tmp_path / "out"
    proc = _start(ALEXNET, out)
    deadline = time.monotonic() + 120
    while not (core := _wandb_core(proc.pid)) or not _run_dirs(out):
        assert proc.poll() is None and time.monotonic() < deadline, "the W&B service never started"
        time.sleep(0.1)
    _wait_for_new_checkpoint(proc, out, 0)  # into the fit: its first epoch is done
    os.kill(core, signal.SIGKILL)
    code, err = _finish(proc)
    assert code == 0, err[-2000:]
    assert err.count("warning: W&B") == 1, err[-2000:]
    assert "Traceback" not in err
    assert list((out / "checkpoints").glob("alexnet-*/finished.pt"))
    # The run's end is on record under its id all the same: finished, with the final numbers.
    final = run_summary(_run_dirs(out)[-1])
    assert final["state"] == "finished" and final["exit_code"] == 0
    assert "test/acc" in final["summary"]

