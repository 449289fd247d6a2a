"""``torchrun --nproc_per_node 2 launch.py detect`` for real: option 2 on a tiny timm backbone,
generated pedestrians, two CPU processes over gloo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, only_run_dir
from dlhw.tracking.readback import logged_table, run_summary
from dlhw.trainers.detection.dataset import generate_pennfudan

# 5 training images (3 steps per rank at batch 1, the last one padded), 3 held out (2 and 1 per rank).
TINY = ["--option", "2", "--skip-photo", "--backbone", "timm/mobilenetv3_small_100", "--levels", "1", "--epochs", "1",
        "--min-size", "64", "--max-size", "96", "--holdout", "3", "--train-eval-images", "2", "--images-per-epoch", "0",
        "--viz-images", "2", "--weights", "none", "--batch-size", "1"]


@pytest.mark.slow
def torchrun(program: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 PROGRAM detect ARGS``, with its own W&B service."""
    base = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           program, "detect", *args], env={**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)


def test_two_processes_train_one_detector_in_one_wandb_run(tmp_path):
    data = generate_pennfudan(tmp_path / "data", n=8, seed=1, size=(60, 80))
    out = tmp_path / "out"
    proc = torchrun(str(ROOT / "launch.py"), ["--data", str(data), "--out", str(out), *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("profile cpu:") == 1  # the plan is said once, by rank 0
    info = run_summary(only_run_dir(out))  # one W&B run for the job
    assert info["state"] == "finished" and info["config"]["world_size"] == 2
    summary = info["summary"]
    for key in ("val/bbox_AP", "val/bbox_AP50", "train/bbox_AP", "train/bbox_AR100"):
        value = summary[key]
        assert 0.0 <= value <= 1.0
    # Both shown held-out images are in rank 0's table, though one of them was rank 1's to predict.
    table = logged_table(only_run_dir(out), "detect/predictions")
    assert len(table["data"]) == 2
    assert len(list((out / "checkpoints").glob("*/option2/last.pt"))) == 1



@pytest.mark.slow
def test_a_detect_job_stopped_by_one_rank_resumes_to_the_uninterrupted_result(tmp_path):
    data = generate_pennfudan(tmp_path / "data", n=8, seed=1, size=(60, 80))
    args = ["--data", str(data), *TINY[:TINY.index("--epochs")], "--epochs", "2", *TINY[TINY.index("--epochs") + 2:]]
    launcher = str(ROOT / "tests" / "distributed" / "launcher.py")
    whole = torchrun(launcher, [*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "out"
    # 3 steps per rank and epoch: rank 1 alone hears SIGTERM after step 4, inside epoch 2.
    stopped = torchrun(launcher, [*args, "--out", str(out)], DLHW_TEST_SIGTERM="1:4")
    assert stopped.returncode != 0
    assert "--resume" in stopped.stderr and list(out.glob("checkpoints/*/option2/last.pt")), stopped.stderr[-3000:]
    resumed = torchrun(launcher, [*args, "--out", str(out), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # one W&B run, continued
    expected, got = run_summary(only_run_dir(tmp_path / "whole"))["summary"], run_summary(runs[-1])["summary"]
    for key in ("train/loss", "train/loss_classifier", "train/bbox_AR100", "val/bbox_AR100", "val/bbox_AP50"):
        assert abs(got[key] - expected[key]) <= 1e-6, (key, got[key], expected[key])
