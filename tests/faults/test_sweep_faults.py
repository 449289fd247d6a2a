"""The sweep runner killed mid-sweep (SIGKILL: nothing runs on its way out; SIGTERM: a scheduler's
stop) and resumed: finished and failed trials stay as they were, the interrupted trial goes on in
its own W&B run from its last step, and the sweep carries on with new trials.

The trial program (tests/tracking/trial_program.py) checkpoints its step and resumes like the
trainers, and holds at a known step until it is stopped, so the fault lands at the same point
however loaded the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch import main
from tests.tracking.test_sweep import sweep_dirs, write_sweep
from dlhw.tracking.readback import records, run_summary
from dlhw.tracking.sweep import Sweep, _started_at


def start_runner(launch_cmd: list[str], cfg: Path, out: Path) -> subprocess.Popen:
    """``launch.py sweep`` in its own process group, so the test can clean up what a kill leaves."""
    return subprocess.Popen([*launch_cmd, "sweep", str(cfg), "--out", str(out), "--wandb-mode", "offline"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_hold(out: Path, proc: subprocess.Popen, timeout_s: float = 120) -> Path:
    """The folder of the trial that holds (it wrote ``held`` and waits): a state that lasts until the
    test acts, so waiting for it is exact on a slow machine too."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = list(out.glob("sweeps/*/trials/*/held"))
        if held:
            return held[0].parent
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"no trial held within {timeout_s} s")


def group_gone(pgid: int) -> bool:
    """Whether no process is left in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def steps_by_process(trial_dir: str | Path) -> list[tuple[int, int]]:
    """(pid, step) for every step the trial program logged, in order."""
    words = (Path(trial_dir) / "steps.log").read_text().split()
    return [(int(pid), int(step)) for pid, step in zip(words[::2], words[1::2])]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_runner_resumes_without_rerunning_or_losing_trials(sig, tmp_path, launch_cmd, capsys):
    # One at a time: x=1 finishes, x=2 fails, x=3 logs steps 0 and 1 and holds: the runner dies then.
    cfg = write_sweep(tmp_path / "f.yaml", method="grid", metric={"name": "score", "goal": "maximize"},
                      parameters={"x": {"values": [1, 2, 3, 4]}, "steps": {"value": 4}, "crash_x": {"value": 2},
                                  "hold_x": {"value": 3}, "hold_at": {"value": 2}})
    out = tmp_path / "out"
    proc = start_runner(launch_cmd, cfg, out)
    try:
        holder = int((wait_for_hold(out, proc) / "held").read_text())
        os.kill(proc.pid, sig)
        text = proc.communicate(timeout=120)[0]
        (directory,) = sweep_dirs(out)
        before = Sweep.load(directory)
        held = before.trials[2]
        if sig == signal.SIGKILL:  # no clean-up ran: the trial still holds, orphaned
            assert proc.returncode == -signal.SIGKILL
            assert [t.state for t in before.trials] == ["finished", "failed", "running"]
            assert held.pid == holder and _started_at(held.pid) == held.pid_started  # found by its start time
        else:  # the runner stopped its trial and recorded it
            assert proc.returncode == 130, text
            assert f"continue with: python launch.py sweep --resume {directory}" in text
            assert [t.state for t in before.trials] == ["finished", "failed", "interrupted"]
            assert _started_at(held.pid) is None

        assert main(["sweep", "--resume", str(directory), "--wandb-mode", "offline"]) == 0
        err = capsys.readouterr().err
        assert "2 trials already ended, 1 interrupted go on from their last checkpoint in their own W&B runs" in err
        assert ("still runs from the runner that was stopped" in err) == (sig == signal.SIGKILL)
        assert group_gone(proc.pid), "processes of the killed runner are still running"  # it starts no readers
    finally:
        try:  # whatever a failed test left
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    after = Sweep.load(directory)
    assert [t.state for t in after.trials] == ["finished", "failed", "finished", "finished"]
    assert [t.values["x"] for t in after.trials] == [1, 2, 3, 4]  # each point once
    for old, new in zip(before.trials[:2], after.trials[:2]):  # ended trials: untouched, not re-run
        assert (new.run_id, new.exit_code, new.run_dir, new.resumed) == (old.run_id, old.exit_code, old.run_dir, 0)
        assert new.log.read_text().count("argv ") == 1
    assert after.trials[1].exit_code == 3 and str(after.trials[1].log) in after.trials[1].note

    # The held trial: the orphan stopped before its second attempt, which went on from step 2.
    resumed = after.trials[2]
    assert _started_at(held.pid) is None and group_gone(held.pid)  # the orphan and its W&B service
    (pid1, _), _, (pid2, _), _ = steps = steps_by_process(resumed.out_dir)
    assert steps == [(holder, 0), (holder, 1), (pid2, 2), (pid2, 3)] and pid1 == holder != pid2
    assert (resumed.run_id, resumed.out_dir, resumed.resumed) == (held.run_id, held.out_dir, 1)
    assert [row["step"] for row in resumed.history] == [0, 1, 2, 3] and resumed.score(after.metric) == 12.0
    folders = sorted(Path(resumed.out_dir).glob("wandb/offline-run-*"))
    assert len(folders) == 2 and str(folders[-1]) == resumed.run_dir  # two folders of one W&B run
    for run_dir in folders:
        assert next(r for r in records(run_dir) if r["type"] == "run")["run"]["run_id"] == resumed.run_id
    assert run_summary(resumed.run_dir)["state"] == "finished"
    log = resumed.log.read_text()
    assert log.count("argv ") == 2 and "--- resumed: attempt 2 of this trial" in log
