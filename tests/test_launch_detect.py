"""`launch.py detect` as a user runs it, with a stop: both options on tiny generated images, stopped
(SIGTERM) once option 2 has its first checkpoint, then resumed with ``--resume auto`` (in the test's
process: nothing stops it). The stop and the resume serve two checks: what the runs logged (COCO AP
from pycocotools, prediction tables, model artifacts, the photo table), and that the resume trains
option 1 no more and continues option 2's W&B run."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import main
from dlhw.tracking.readback import history, run_summary
from tests.conftest import ROOT, SHARED_DATA, artifacts, logged_table
from dlhw.trainers.detection.dataset import generate_pennfudan

pytestmark = pytest.mark.slow

# A small timm backbone for option 2: the tutorial's MobileNetV2 head alone is 64M parameters.
# 4 training images at batch 2: 2 steps per epoch.
TINY = ["--backbone", "timm/test_efficientnet", "--levels", "1", "--epochs", "2", "--min-size", "64",
        "--max-size", "96", "--holdout", "3", "--train-eval-images", "2", "--images-per-epoch", "0", "--viz-images", "2",
        "--weights", "none"]


def _start(args: list[str], out: Path, log: Path) -> subprocess.Popen:
    # Its own W&B service, as from a shell: one inherited from this process would outlive the stop.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    with log.open("w") as stdout:
        return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "detect", *args, "--out", str(out)],
                                env={**env, "PYTHONPATH": str(ROOT)}, stdout=stdout, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def detect(tmp_path_factory):
    """The stopped and the resumed launch: ``(out, printed, option 1's files after the stop)``."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    tmp = tmp_path_factory.mktemp("detect")
    data = generate_pennfudan(tmp / "data", n=7, seed=1, size=(60, 80))
    args = ["--data", str(data), "--image", str(SHARED_DATA / "images" / "bus.jpg"), *TINY]
    out = tmp / "out"
    proc = _start(args, out, tmp / "first.log")
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list((out / "checkpoints").glob("detect-*/option2/last.pt")):
        assert time.monotonic() < deadline, "option 2 wrote no checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    (option1,) = (out / "checkpoints").glob("detect-*/option1")
    stopped = {p.name: p.stat().st_mtime_ns for p in option1.iterdir()}

    with contextlib.redirect_stdout(io.StringIO()) as second, contextlib.redirect_stderr(second):
        code = main(["detect", *args, "--resume", "auto", "--out", str(out)])
    assert code == 0, second.getvalue()[-2000:]
    printed = (tmp / "first.log").read_text() + err + second.getvalue()
    return out, printed, option1, stopped


def _runs(out: Path) -> dict[str, list[Path]]:
    """The run folders of option1, option2 (its two parts, in order) and the photo run."""
    runs: dict[str, list[Path]] = {}
    for d in sorted((out / "wandb").glob("offline-run-*")):
        option = run_summary(d)["config"]["option"]
        runs.setdefault(f"option{option}" if option in ("1", "2") else "photo", []).append(d)
    return runs


def test_detect_logs_both_options_and_the_photo(detect):
    out, printed, _, _ = detect
    assert "profile cpu: epochs=2" in printed and "4 train, 3 held out" in printed
    # The option runs record their option number; the photo run records the command's "--option both".
    runs = _runs(out)
    assert sorted(runs) == ["option1", "option2", "photo"]
    for option in ("option1", "option2"):
        info = run_summary(runs[option][-1])
        assert info["state"] == "finished" and info["config"]["data_source"] == "penn-fudan"
        assert info["config"]["start_weights"] == "random" and info["config"]["clip_grad"] == 10.0
        assert info["config"]["min_size"] == 64
        summary = info["summary"]
        assert 0.0 <= summary["val/bbox_AP"] <= 1.0  # the checkpoint's monitor keeps its best value
        for key in ("train/bbox_AP", "val/bbox_AP50", "val/bbox_AR100"):
            assert 0.0 <= summary[key] <= 1.0
        assert ("val/segm_AP" in summary) == (option == "option1")
        aliases = {a for part in runs[option] for m in artifacts(part) if m["type"] == "model" for a in m["aliases"]}
        assert {"best", "last"} <= aliases
        steps = [r for part in runs[option] for r in history(part) if "train/loss" in r]
        assert len(steps) == 4 and {"train/lr", "train/loss_objectness", "train/loss_rpn_box_reg"} <= set(steps[0])
        table = logged_table(runs[option][-1], "detect/predictions")
        assert table["columns"][:3] == ["epoch", "image_id", "image"] and len(table["data"]) == 2
        cell = table["data"][0][2]
        assert Path(cell["local_path"]).is_file() and set(cell["boxes"]) == {"ground_truth", "predictions"}
        assert ("masks" in cell) == (option == "option1")

    (photo_run,) = runs["photo"]
    photo = logged_table(photo_run, "detect/photo")
    assert photo["columns"] == ["model", "photo", "people@0.5", "people@0.7", "mean_score", "inference_ms"]
    assert [r[0] for r in photo["data"]] == ["option 1: maskrcnn_resnet50_fpn",
                                             "option 2: fasterrcnn_timm_test_efficientnet"]
    assert all(r[2] >= r[3] >= 0 and r[5] > 0 for r in photo["data"])
    assert (photo["data"][0][1]["width"], photo["data"][0][1]["height"]) == (810, 1080)
    verdict = logged_table(photo_run, "detect/verdict")
    assert verdict["data"][1][3] is None and isinstance(verdict["data"][0][3], float)
    assert "both models on bus" in printed and "verdict: option 1 vs option 2" in printed


def test_a_stop_in_option_2_resumes_it_in_its_run_and_leaves_option_1_alone(detect):
    out, printed, option1, stopped = detect
    assert "continue with: " in printed and "--resume " in printed
    assert "finished.pt" in stopped
    assert "option 1: finished in" in printed and "not trained again" in printed
    assert {p.name: p.stat().st_mtime_ns for p in option1.iterdir()} == stopped  # option 1 was not rewritten
    assert list((out / "checkpoints").glob("detect-*/option2/finished.pt"))
    # Option 2 went on in the same W&B run: every step once, its epochs in order, a clean end.
    parts = _runs(out)["option2"]
    assert len(parts) == 2 and len({p.name.rsplit("-", 1)[1] for p in parts}) == 1, parts
    steps = [int(r["trainer/step"]) for part in parts for r in history(part) if "train/loss" in r]
    assert steps == [0, 1, 2, 3]  # 4 training images, batch 2, 2 epochs
    epochs = [int(r["epoch"]) for part in parts for r in history(part) if "val/bbox_AP" in r]
    assert epochs == [1, 2]
    assert run_summary(parts[-1])["exit_code"] == 0
