"""``torchrun --nproc_per_node 2 launch.py detect`` for real: option 2 on a tiny timm backbone,
generated pedestrians, two CPU processes over gloo."""

from __future__ import annotations

import pytest

from tests.conftest import logged_table, only_run_dir
from tests.distributed.launcher import torchrun
from dlhw.tracking.readback import run_summary
from dlhw.trainers.detection.dataset import generate_pennfudan

# 5 training images (3 steps per rank at batch 1, the last one padded), 3 held out (2 and 1 per rank).
TINY = ["--option", "2", "--skip-photo", "--backbone", "timm/test_efficientnet", "--levels", "1", "--epochs", "1",
        "--min-size", "64", "--max-size", "96", "--holdout", "3", "--train-eval-images", "2", "--images-per-epoch", "0",
        "--viz-images", "2", "--weights", "none", "--batch-size", "1"]


@pytest.mark.slow
def test_two_processes_train_one_detector_in_one_run_and_resume_a_stop_to_the_same_result(tmp_path):
    data = generate_pennfudan(tmp_path / "data", n=8, seed=1, size=(60, 80))
    args = ["--data", str(data), *TINY[:TINY.index("--epochs")], "--epochs", "2", *TINY[TINY.index("--epochs") + 2:]]
    whole = torchrun(["detect", *args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert whole.stdout.count("profile cpu:") == 1  # the plan is said once, by rank 0
    info = run_summary(only_run_dir(tmp_path / "whole"))  # one W&B run for the job
    assert info["state"] == "finished" and info["config"]["world_size"] == 2
    for key in ("val/bbox_AP", "val/bbox_AP50", "train/bbox_AP", "train/bbox_AR100"):
        assert 0.0 <= info["summary"][key] <= 1.0
    # Both shown held-out images are in rank 0's table, though one of them was rank 1's to predict.
    assert len(logged_table(only_run_dir(tmp_path / "whole"), "detect/predictions")["data"]) == 2
    assert len(list((tmp_path / "whole" / "checkpoints").glob("*/option2/last.pt"))) == 1

    out = tmp_path / "out"
    # 3 steps per rank and epoch: rank 1 alone hears SIGTERM after step 4, inside epoch 2; both ranks stop there.
    stopped = torchrun(["detect", *args, "--out", str(out)], DLHW_TEST_SIGTERM="1:4")
    assert stopped.returncode != 0
    assert "continue with: torchrun --standalone --nproc_per_node 2 launch.py detect" in stopped.stderr, \
        stopped.stderr[-3000:]
    assert list(out.glob("checkpoints/*/option2/last.pt"))
    resumed = torchrun(["detect", *args, "--out", str(out), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # one W&B run, continued
    expected, got = run_summary(only_run_dir(tmp_path / "whole"))["summary"], run_summary(runs[-1])["summary"]
    for key in ("train/loss", "train/loss_classifier", "train/bbox_AR100", "val/bbox_AR100", "val/bbox_AP50"):
        assert abs(got[key] - expected[key]) <= 1e-6, (key, got[key], expected[key])
