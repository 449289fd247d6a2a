"""The trainer's loop details: the epoch sampler, the stop on a non-finite loss, the evaluation
schedule, and the tutorial's recipe (warm-up, StepLR 3 / 0.1)."""

from __future__ import annotations

import math

import pytest

from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.core.events import Callback
from dlhw.tracking.readback import history, run_summary
from dlhw.trainers.detection.dataset import PennFudan, generate_pennfudan, read_pennfudan
from dlhw.trainers.detection.models import build_detector
from dlhw.trainers.detection.trainer import PROFILES, DetectionTrainer, DetectSettings, EpochSlices, detector_kwargs


def detect_settings(profile: str = "cpu", **overrides) -> DetectSettings:
    """A profile's settings for option 2 on the CPU, as ``prepare`` would resolve them."""
    return DetectSettings(**{**PROFILES[profile], "profile": profile, "option": "2", "workers": 0, "device": "cpu",
                             "eval_batch_size": 1, **overrides})


def test_epoch_slices_cover_the_training_set_in_turn():
    s = EpochSlices(10, 4, seed=0)
    seen = []
    for epoch in range(5):
        s.set_epoch(epoch)
        seen.append(list(s))
    assert all(len(x) == 4 for x in seen)
    assert sorted(seen[0] + seen[1] + seen[2][:2]) == list(range(10))  # 10 images, then the next permutation
    assert len(set(seen[0]) | set(seen[1])) == 8
    s.set_epoch(1)
    assert list(s) == seen[1]  # reproducible


def test_non_finite_loss_stops_with_every_term_logged(tmp_path):
    samples = read_pennfudan(generate_pennfudan(tmp_path / "d", n=4, seed=2, size=(60, 80)))
    data = PennFudan(samples)
    s = detect_settings(epochs=3, lr=1e30, min_size=64, max_size=96, images_per_epoch=0)
    model = build_detector(2, model="", backbone="timm/test_efficientnet", weights="none", levels=1,
                           **detector_kwargs(s)).model
    logger = WandbLogger(project="tests", mode="offline", out_dir=tmp_path, log_every=1)
    trainer = DetectionTrainer(model, s, train=data, heldout=data, train_eval=data, callbacks=[logger])
    with pytest.raises(FloatingPointError, match="non-finite loss at step .*train/loss_objectness=.*train/loss="):
        trainer.fit()
    info = run_summary(logger.run_dir)
    assert info["exit_code"] == 1 and "non-finite loss" in info["summary"]["error"]
    last = [r for r in history(logger.run_dir) if "train/loss" in r][-1]
    assert not math.isfinite(float(last["train/loss"])) and "train/loss_classifier" in last


class _Validations(Callback):
    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        self.keys.append(set(metrics))


def test_held_out_ap_every_epoch_train_ap_every_k_and_at_the_end(tmp_path):
    samples = read_pennfudan(generate_pennfudan(tmp_path / "d", n=5, seed=3, size=(60, 80)))
    data = PennFudan(samples)
    s = detect_settings(epochs=3, min_size=64, max_size=96, images_per_epoch=2, rois_per_image=16, rpn_post_nms_train=50,
                        rpn_post_nms_test=20, detections_per_image=5, viz_images=2, clip_grad=10.0,
                        train_eval_every=2, eval_batch_size=3)
    model = build_detector(2, model="", backbone="timm/test_efficientnet", weights="none", levels=1,
                           **detector_kwargs(s)).model
    seen = _Validations()
    trainer = DetectionTrainer(model, s, train=data, heldout=data, train_eval=data, callbacks=[seen])
    trainer.fit()
    has_train = [any(k.startswith("train/bbox_") for k in keys) for keys in seen.keys]
    assert has_train == [False, True, True]  # epoch 2 (every 2nd) and epoch 3 (the last)
    assert all({"val/bbox_AP", "val/bbox_AR100", "time/eval_seconds"} <= keys for keys in seen.keys)
    # Batches of 3 over 5 images: every image scored once, the kept ones shown.
    outputs = trainer.predict(data, keep=trainer.viz_ids)
    assert sorted(outputs) == sorted(int(data[i][1]["image_id"]) for i in range(len(data)))
    assert sorted(int(t["image_id"]) for _, t, _ in trainer.viz[-2:]) == sorted(
        int(data[i][1]["image_id"]) for i in trainer.viz_ids)


def test_full_profile_is_the_tutorials_recipe():
    full = PROFILES["full"]
    assert [full[k] for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size")] == [10, 0.005, 0.9, 5e-4, 2]
    assert (full["step_size"], full["gamma"]) == (3, 0.1)


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_log(self, trainer, metrics, axis) -> None:
        if "train/lr" in metrics:
            self.lrs.append(metrics["train/lr"])


@pytest.mark.slow
def test_learning_rate_warms_up_in_the_first_epoch_then_steps_down_every_3_epochs(tmp_path):
    samples = read_pennfudan(generate_pennfudan(tmp_path / "d", n=3, seed=2, size=(60, 80)))
    data = PennFudan(samples)
    s = detect_settings("full", epochs=7, batch_size=1, min_size=64, max_size=96, rois_per_image=16,
                        rpn_post_nms_train=50, rpn_post_nms_test=20, detections_per_image=5)
    model = build_detector(2, model="", backbone="timm/test_efficientnet", weights="none", levels=1,
                           **detector_kwargs(s)).model
    lrs = _LearningRates()
    trainer = DetectionTrainer(model, s, train=data, heldout=data, train_eval=data, callbacks=[lrs])
    for epoch in range(7):  # the training loop only: the schedule does not depend on evaluation
        trainer.train_epoch(epoch)
    steps = 3  # 3 images, batch 1
    first, rest = lrs.lrs[:steps], lrs.lrs[steps:]
    # references/detection's warm-up: linear from 1e-3 x lr to lr over the first epoch's steps.
    assert first == pytest.approx([0.005 * 1e-3, 0.005 * (1e-3 + (1 - 1e-3) / 2), 0.005])
    # StepLR(3, 0.1) per epoch: epochs 1-2 at lr, 3-5 at lr/10, 6 at lr/100.
    per_epoch = [rest[i * steps] for i in range(6)]
    assert per_epoch == pytest.approx([0.005, 0.005, 5e-4, 5e-4, 5e-4, 5e-5])
