"""``torchrun --nproc_per_node 2 launch.py alexnet`` for real: two CPU processes over gloo, tiny digits.

The runs go through tests/distributed/launcher.py, which is launch.py with test-only hooks: it
records each rank's training indices and command line, turns dropout off, or makes one rank fail.
The 2-process run whose ranks are compared with one process is also the first trial of
sweeps/weight_decay_torchrun.yaml, started as ``wandb agent`` starts it (tracking.agent_command).
A stop that one rank alone hears is tests/distributed/test_torchrun_detect.py's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from launch import main
from tests.conftest import only_run_dir
from tests.distributed import launcher
from tests.distributed.test_torchrun_sweep import TRIAL, first_trial
from dlhw.trainers import classification
from dlhw.tracking.agent_command import trial_command, trial_environment
from dlhw.tracking.readback import run_summary

pytestmark = pytest.mark.slow  # real multi-process runs: CI runs them, -m "not slow" leaves them out

# 2 epochs of 4 steps; evaluation limited to 4 batches per rank too. The global batch is 16 in both
# configurations (2 x 8, 1 x 16), so one process and two see the same images in every step and
# every evaluation (see test_two_processes_end_where_one_process_ends). No augmentation: its
# random draws are per rank.
ALEXNET = ["alexnet", "--device", "cpu", "--device-data", "on", "--hessian-every", "0", "--viz-images", "0",
           "--epochs", "2", "--limit-batches", "4", "--no-augment", "--seed", "3"]
TWO = [*ALEXNET, "--batch-size", "8"]
# One process takes the sweep trial's flags too: the 2-process run is a trial (see the fixture).
ONE = ["alexnet", *TRIAL, *ALEXNET[1:], "--batch-size", "16"]
# One process and two differ only in float rounding: DDP averages the two ranks' mean gradients,
# one process takes the mean over all 16 images at once (summed in another order); the bound leaves
# room for that rounding to grow over the steps.
TOLERANCE = 1e-5
# A resumed run repeats the steps of the failed one exactly (the fault tests' bound: float32 printing).
RESUME_TOLERANCE = 1e-6
# Two processes that start, train an epoch, fail and are cleaned up, on a busy machine; a hang would
# last until gloo's collective timeout (30 minutes).
BOUND_S = 180
COMPARED = ("val/loss", "best/val/acc", "test/loss", "test/acc")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep's first trial, tiny, as a 2-process run: its indices and command lines recorded,
    dropout off; its --out folder."""
    out = tmp_path_factory.mktemp("two") / "out"
    record = out.parent / "record"
    record.mkdir()
    config, params = first_trial()
    argv = trial_command(config["command"], program=launcher.__file__, params=params,
                         args_json_file=out.parent / "args.json", python=sys.executable)
    env = trial_environment(launcher.environment(DLHW_OUT=str(out), DLHW_TEST_RECORD=str(record),
                                                 DLHW_TEST_NO_DROPOUT="1"),
                            run_id="trial1", params=params, param_file=out.parent / "params.yaml")
    # Tiny on top of the trial's own flags (later flags win).
    proc = subprocess.run([*argv, *TWO[1:], "--out", str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_sweep_trial_is_one_wandb_run_under_the_agents_id_with_the_world_size_in_its_config(two):
    (run_dir,) = (two / "wandb").glob("offline-run-*-trial1")
    assert only_run_dir(two) == run_dir  # rank 0's run alone
    summary = run_summary(run_dir)
    assert summary["state"] == "finished"
    assert {k: summary["config"][k] for k in ("lr", "optimizer", "epochs", "world_size", "batch_size")} == {
        "lr": 0.02, "optimizer": "sgd", "epochs": 2, "world_size": 2, "batch_size": 8}
    assert all(key in summary["summary"] for key in COMPARED)
    # Rank 0 alone wrote checkpoints: one job folder, one last.pt.
    assert [p.name for p in (two / "checkpoints").iterdir()] == [next((two / "checkpoints").iterdir()).name]
    assert len(list((two / "checkpoints").glob("*/last.pt"))) == 1


def test_each_rank_sees_the_sweep_trials_parameters(two):
    _, params = first_trial()
    for rank in (0, 1):
        seen = json.loads((two.parent / "record" / f"rank{rank}.argv.json").read_text())
        assert seen == {"argv": ["alexnet", *TRIAL, *TWO[1:], "--out", str(two)],
                        "param_file": {k: v["value"] for k, v in params.items()}}


def test_each_rank_trains_on_a_disjoint_half_of_every_epoch(two):
    ranks = [[json.loads(line) for line in (two.parent / "record" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # one shard per epoch
    for a, b in zip(*ranks):
        n = len(set(a) | set(b))
        assert len(a) == len(b) == math.ceil(n / 2)  # equal steps on both ranks
        assert sorted(set(a) | set(b)) == list(range(n))  # together: every training image
        assert len(set(a) & set(b)) == 2 * len(a) - n  # shared: only the padding, none for an even n
    assert ranks[0][0] != ranks[0][1]  # a new order every epoch


def test_each_rank_draws_its_own_random_numbers(two):
    # Rank R reseeds with --seed + R: its own dropout masks and sampling (rank 0's are one process's).
    seeds = [int((two.parent / "record" / f"rank{r}.seed").read_text()) for r in (0, 1)]
    assert seeds == [3, 4]


def test_two_processes_end_where_one_process_ends_with_the_same_global_batch(two, tmp_path, monkeypatch):
    # One process, in this one: launch.py with the hook that turned the ranks' dropout off.
    monkeypatch.setenv("DLHW_TEST_NO_DROPOUT", "1")
    monkeypatch.setattr(classification, "build_trainer", launcher.with_hooks(classification.build_trainer))
    assert main([*ONE, "--out", str(tmp_path / "out")]) == 0
    one = run_summary(only_run_dir(tmp_path / "out"))["summary"]
    both = run_summary(only_run_dir(two))["summary"]
    for key in COMPARED:
        assert abs(one[key] - both[key]) <= TOLERANCE, (key, one[key], both[key])


# Dropout on and augmentation by albumentations (the DataLoader path): every rank draws its own
# masks and augmentations, and a resume must restore each rank's generators, not rank 0's twice.
RANDOM_TWO = ["alexnet", "--device", "cpu", "--device-data", "off", "--hessian-every", "0", "--viz-images", "0",
              "--epochs", "2", "--limit-batches", "4", "--seed", "3", "--batch-size", "8"]


def steps(record: Path, rank: int) -> dict[int, dict]:
    """What rank RANK recorded after each training step: the global batch's loss and its torch random state."""
    rows = [json.loads(line) for line in (record / f"rank{rank}.steps.jsonl").read_text().splitlines()]
    return {row.pop("step"): row for row in rows}


def test_when_one_rank_raises_both_exit_showing_it_once_and_a_resume_restores_every_ranks_random_state(
        tmp_path, capsys):
    out, failed_steps, resumed_steps = tmp_path / "out", tmp_path / "failed_steps", tmp_path / "resumed_steps"
    failed_steps.mkdir()
    resumed_steps.mkdir()
    # Rank 1 raises at step 6, mid-epoch 2 (4 steps an epoch), while rank 0 waits for it in a collective. A hang:
    # TimeoutExpired.
    failed = launcher.torchrun([*RANDOM_TWO, "--out", str(out)], DLHW_TEST_FAIL="1:6",
                               DLHW_TEST_STEPS=str(failed_steps), timeout=BOUND_S)
    assert failed.returncode != 0
    printed = failed.stdout + failed.stderr
    assert printed.count("ValueError: injected failure on rank 1 at step 6") == 1, printed[-3000:]
    assert "Connection closed by peer" not in printed  # rank 0's echo of the failure stays quiet
    # Rank 0's W&B run recorded the failure instead of staying "running".
    assert run_summary(only_run_dir(out))["exit_code"] == 1
    (checkpoint,) = out.glob("checkpoints/*/last.pt")  # epoch 1's, every rank's random state in it

    # The checkpoint belongs to a job of two processes: one process refuses it in one line (here, in this one:
    # the refusal comes before any training or W&B run).
    assert main([*RANDOM_TWO, "--resume", str(checkpoint), "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: checkpoint {checkpoint} was written by a job of 2 process(es), this one has 1; resume it with as "
        f"many (torchrun --nproc_per_node), or start afresh without --resume")

    resumed = launcher.torchrun([*RANDOM_TWO, "--resume", "auto", "--out", str(out)],
                                DLHW_TEST_STEPS=str(resumed_steps))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # one W&B run, continued
    summary = run_summary(runs[-1])
    assert summary["state"] == "finished" and all(key in summary["summary"] for key in COMPARED)
    # Epoch 2 again from epoch 1's checkpoint: steps 5 and 6 take the same batches, augmentations and dropout
    # masks on each rank as before the failure (the loss is the global batch's, both ranks' draws in it), and each
    # rank's torch generator is where it was. Step 6 follows an update: the optimizer's state was restored too.
    for rank in (0, 1):
        before, after = steps(failed_steps, rank), steps(resumed_steps, rank)
        assert sorted(before) == [1, 2, 3, 4, 5, 6] and sorted(after) == [5, 6, 7, 8]
        for step in (5, 6):
            assert after[step]["rng"] == before[step]["rng"], (rank, step)
            assert abs(after[step]["loss"] - before[step]["loss"]) <= RESUME_TOLERANCE, (rank, step, before, after)
    assert steps(resumed_steps, 0)[5]["rng"] != steps(resumed_steps, 1)[5]["rng"]  # each rank its own generator
