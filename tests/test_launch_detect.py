"""`launch.py detect` as a user runs it: both options trained one epoch on tiny generated images,
COCO AP from pycocotools, prediction tables and the photo table read back from the offline runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dlhw.tracking.readback import history, run_summary
from tests.conftest import artifacts, logged_table
from dlhw.trainers.detection.dataset import generate_pennfudan

# A small timm backbone for option 2: the tutorial's MobileNetV2 head alone is 64M parameters.
TINY = ["--backbone", "timm/mobilenetv3_small_100", "--levels", "1", "--epochs", "1", "--min-size", "64", "--max-size", "96", "--holdout", "3", "--train-eval-images", "2",
        "--images-per-epoch", "0", "--viz-images", "2", "--weights", "none"]


def _run(cmd, *args):
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_detect_end_to_end_offline(launch_cmd, tmp_path, shared_data):
    data = generate_pennfudan(tmp_path / "data", n=7, seed=1, size=(60, 80))
    out = tmp_path / "out"
    bus = shared_data / "images" / "bus.jpg"
    proc = _run(launch_cmd, "detect", "--data", str(data), "--image", str(bus), "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "profile cpu: epochs=1" in proc.stdout and "4 train, 3 held out" in proc.stdout
    # The option runs record their option number; the photo run records the command's "--option both".
    configs = {d: run_summary(d)["config"] for d in (out / "wandb").glob("offline-run-*")}
    runs = {f"option{c['option']}" if c["option"] in ("1", "2") else "photo": d for d, c in configs.items()}
    assert sorted(runs) == ["option1", "option2", "photo"]

    for option in ("option1", "option2"):
        info = run_summary(runs[option])
        assert info["state"] == "finished" and info["config"]["data_source"] == "penn-fudan"
        assert info["config"]["start_weights"] == "random" and info["config"]["clip_grad"] == 10.0
        assert info["config"]["min_size"] == 64
        summary = info["summary"]
        assert 0.0 <= summary["val/bbox_AP"] <= 1.0  # the checkpoint's monitor keeps its best value
        for key in ("train/bbox_AP", "val/bbox_AP50", "val/bbox_AR100"):
            assert 0.0 <= summary[key] <= 1.0
        assert ("val/segm_AP" in summary) == (option == "option1")
        (model,) = [a for a in artifacts(runs[option]) if a["type"] == "model"]
        assert {"best", "last"} <= set(model["aliases"])  # one epoch: the best checkpoint is also the last
        steps = [r for r in history(runs[option]) if "train/loss" in r]
        assert len(steps) == 2 and {"train/lr", "train/loss_objectness", "train/loss_rpn_box_reg"} <= set(steps[0])
        table = logged_table(runs[option], "detect/predictions")
        assert table["columns"][:3] == ["epoch", "image_id", "image"] and len(table["data"]) == 2
        cell = table["data"][0][2]
        assert Path(cell["local_path"]).is_file() and set(cell["boxes"]) == {"ground_truth", "predictions"}
        assert ("masks" in cell) == (option == "option1")

    photo = logged_table(runs["photo"], "detect/photo")
    assert photo["columns"] == ["model", "photo", "people@0.5", "people@0.7", "mean_score", "inference_ms"]
    assert [r[0] for r in photo["data"]] == ["option 1: maskrcnn_resnet50_fpn", "option 2: fasterrcnn_timm_mobilenetv3_small_100"]
    assert all(r[2] >= r[3] >= 0 and r[5] > 0 for r in photo["data"])
    assert (photo["data"][0][1]["width"], photo["data"][0][1]["height"]) == (810, 1080)
    verdict = logged_table(runs["photo"], "detect/verdict")
    assert verdict["data"][1][3] is None and isinstance(verdict["data"][0][3], float)
    assert "both models on bus" in proc.stdout and "verdict: option 1 vs option 2" in proc.stdout
