"""The W&B logger on real offline runs, read back with `wandb leet inspect`."""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest
import torch

from dlhw.callbacks.checkpoint import Checkpoint
from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.tracking.readback import history, records, run_summary
from tests.conftest import artifacts
from dlhw.trainers.engine import Engine


class Tiny(Engine):
    def __init__(self, callbacks, epochs=3, fail=False):
        super().__init__(callbacks, epochs=epochs, config={"lr": 0.1, "seed": 0}, name="tiny", steps_per_epoch=3)
        self.model = torch.nn.Linear(2, 1)
        self.fail = fail

    def train_epoch(self, epoch):
        for i in range(3):
            if self.fail and epoch == 1:
                raise RuntimeError("diverged")
            self.log({"train/loss": 1.0 / (self.global_step + 1), "train/lr": 0.1})
            self.step_end(i, {})

    def evaluate(self, epoch):
        return {"val/acc": [0.5, 0.9, 0.7][epoch], "val/loss": 1.0 - epoch / 10}

    def state_dict(self):
        return {"model": self.model.state_dict()}


def _logger(tmp_path, log_every=1, **kw):
    return WandbLogger(project="tests", mode="offline", out_dir=tmp_path, job_type="unit", tags=["t"],
                       log_every=log_every, **kw)


def test_config_summary_axes_and_best_value(tmp_path):
    logger = _logger(tmp_path, monitor=("val/acc", "max"))
    Tiny([logger]).fit()
    info = run_summary(logger.run_dir)
    assert info["state"] == "finished" and info["exit_code"] == 0
    assert info["config"]["lr"] == 0.1
    summary = info["summary"]
    assert summary["val/acc"] == 0.9  # best, not last (0.7), as a plain number
    assert summary["val/loss"] == pytest.approx(0.8)
    assert summary["train/loss"] == pytest.approx(1 / 9)
    assert summary["trainer/step"] == 8 and summary["epoch"] == 3
    rows = history(logger.run_dir)
    steps = [r["trainer/step"] for r in rows if "train/loss" in r]
    epochs = [r["epoch"] for r in rows if "val/acc" in r]
    assert steps == list(range(9)) and epochs == [1, 2, 3]


def test_step_metrics_thinned_by_window_never_dropped(tmp_path):
    logger = _logger(tmp_path, log_every=4)
    Tiny([logger]).fit()
    rows = history(logger.run_dir)
    # A window closes every 4 steps and before each epoch's metrics: the epoch's last step is sent.
    loss = {r["trainer/step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert list(loss) == [0, 2, 4, 5, 8]
    assert loss[2] == pytest.approx((1 / 2 + 1 / 3) / 2)  # the mean of the window's steps 1 and 2
    assert loss[8] == pytest.approx((1 / 7 + 1 / 8 + 1 / 9) / 3)
    assert [r["epoch"] for r in rows if "val/acc" in r] == [1, 2, 3]
    summary = run_summary(logger.run_dir)["summary"]
    assert summary["train/loss"] == pytest.approx(1 / 9) and summary["trainer/step"] == 8  # the last, not the mean


def test_single_epoch_numbers_go_to_the_summary_only(tmp_path):
    logger = _logger(tmp_path)
    Tiny([logger], epochs=1).fit()
    assert not [r for r in history(logger.run_dir) if "val/acc" in r]
    assert run_summary(logger.run_dir)["summary"]["val/acc"] == 0.5


def test_checkpoint_is_atomic_and_uploaded_as_artifact(tmp_path, monkeypatch):
    from dlhw.callbacks import wandb_logger

    build, threads = wandb_logger._model_artifact, []

    def recorded(*args):
        threads.append(threading.current_thread())
        return build(*args)

    monkeypatch.setattr(wandb_logger, "_model_artifact", recorded)
    logger = _logger(tmp_path, monitor=("val/acc", "max"))
    ckpt = Checkpoint(tmp_path / "ckpt", monitor="val/acc")
    trainer = Tiny([logger, ckpt])
    trainer.fit()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=False)
    assert best["epoch"] == 2 and best["metrics"]["val/acc"] == 0.9
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["epoch"] == 3
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    # Each version holds its epoch's best.pt, though a newer file took the name since: the last one is today's file.
    digests = [e["digest"] for r in records(logger.run_dir) if r.get("type") == "artifact"
               for e in r["artifact"]["manifest"]["contents"]]
    now = base64.b64encode(hashlib.md5((tmp_path / "ckpt" / "best.pt").read_bytes()).digest()).decode()
    assert digests[-1] == now != digests[0]
    arts = artifacts(logger.run_dir)
    assert len(arts) == 2 and all(a["type"] == "model" for a in arts)  # epochs 1 and 2 improved
    assert set(arts[-1]["aliases"]) == {"best", "latest"} and arts[-1]["files"] == ["best.pt"]
    assert arts[-1]["metadata"] == {"epoch": 2, "step": 6, "val/acc": 0.9, "val/loss": 0.9}
    assert trainer.summary["best/val/acc"] == 0.9
    # Hashed and copied into the artifact on a worker thread, not in the training step.
    assert len(threads) == 2 and threading.main_thread() not in threads


def test_best_once_at_the_end_and_the_last_checkpoint(tmp_path):
    logger = _logger(tmp_path, monitor=("val/acc", "max"))
    Tiny([logger, Checkpoint(tmp_path / "ckpt", monitor="val/acc", upload="end", upload_last=True)]).fit()
    arts = artifacts(logger.run_dir)  # val/acc peaks at epoch 2 of 3: best and last differ
    # W&B adds `latest` to each version it logs; the server keeps it on the newest (last.pt).
    assert [(a["files"], set(a["aliases"])) for a in arts] == [(["best.pt"], {"best", "latest"}),
                                                              (["last.pt"], {"last", "latest"})]
    assert [a["metadata"]["epoch"] for a in arts] == [2, 3]  # each its own epoch, though both sent at the end


def test_crash_finishes_the_run_with_a_failing_exit_code(tmp_path):
    logger = _logger(tmp_path)
    with pytest.raises(RuntimeError):
        Tiny([logger], fail=True).fit()
    info = run_summary(logger.run_dir)
    assert info["exit_code"] == 1 and info["state"] == "failed"
    assert info["summary"]["error"] == "RuntimeError: diverged"
    assert info["summary"]["train/loss"] == pytest.approx(1 / 3)  # what was logged survives


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = _logger(tmp_path)
    Tiny([logger], epochs=1).fit()
    assert logger.run_dir is None and not (tmp_path / "wandb").exists()


class SelfCheck(Tiny):
    def test(self):
        return {"check/passed": 0.0}


def test_failed_self_check_finishes_the_run_with_exit_code_1(tmp_path):
    logger = _logger(tmp_path)
    trainer = SelfCheck([logger], epochs=1)
    trainer.fit()
    info = run_summary(logger.run_dir)
    assert trainer.exit_code == 1 and info["exit_code"] == 1 and info["state"] == "failed"
    assert info["summary"]["check/passed"] == 0
