"""The Lightning callbacks leave a fit bit-identical, watch every optimizer, and read predictions
the module already computed, from batches that are not (x, y)."""

from __future__ import annotations

import pytest
import torch
import wandb
from torch import nn
from torch.utils.data import DataLoader, Dataset

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import WandbLogger  # noqa: E402

from dlhw.callbacks.lightning import (ConfusionMatrixCallback, FeatureMapsCallback, LearnedFiltersCallback,  # noqa: E402
                                      WeightDecayCallback)
from dlhw.tracking.readback import history  # noqa: E402

g = torch.Generator().manual_seed(0)
X, Y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)


class Dicts(Dataset):
    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": X[i], "label": Y[i]}


class Net(L.LightningModule):
    """BatchNorm, dropout, AdamW with a per-step schedule, dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                 nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch["image"]), batch["label"])
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        return {"logits": self(batch["image"])}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "interval": "step"}}


def fit(tmp_path, callbacks) -> tuple[dict[str, torch.Tensor], str]:
    L.seed_everything(0, verbose=False)
    model = Net()
    trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=2, logger=WandbLogger(mode="offline", save_dir=tmp_path),
                        callbacks=callbacks, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(Dicts(), batch_size=8, shuffle=True))
    trainer.test(model, DataLoader(Dicts(), batch_size=16), verbose=False)
    run_dir = wandb.run.dir
    wandb.finish()
    return {k: v.clone() for k, v in model.state_dict().items()}, run_dir


def test_every_callback_leaves_the_fit_bit_identical(tmp_path):
    plain, _ = fit(tmp_path / "plain", [])
    matrix = ConfusionMatrixCallback(["a", "b", "c"], batch_to_xy=lambda b: (b["image"], b["label"]))
    watched, run_files = fit(tmp_path / "watched", [
        LearnedFiltersCallback(layer="net.4"), FeatureMapsCallback(X[:2], layers=["net.0", "net.2"]), matrix,
        WeightDecayCallback(curvature_batch=(X[:16], Y[:16]))])
    assert plain.keys() == watched.keys()
    for k in plain:  # weights and BatchNorm statistics alike
        assert torch.equal(plain[k], watched[k]), k
    # The predictions are the test_step's own logits, counted from dict batches.
    model = Net()
    model.load_state_dict(watched)
    model.eval()
    assert matrix.predictions == model(X).argmax(-1).tolist() and matrix.targets == Y.tolist()
    rows = history(next((tmp_path / "watched" / "wandb").glob("offline-run-*")))
    captions = [r["viz/conv1_filters.caption"] for r in rows if "viz/conv1_filters.caption" in r]
    assert captions == ["net.4 after epoch 1", "net.4 after epoch 2"]
    assert sum("train/loss" in r for r in rows) == 6  # 48 / 8 batches / 2 accumulated, 2 epochs: every row kept
    assert [r["wd/step"] for r in rows if "wd/decay_factor" in r][-1] == 6


class TwoOptimizers(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        for opt in self.optimizers():
            opt.zero_grad()
        self.manual_backward(self.b(self.a(batch[0])).pow(2).mean())
        for opt in self.optimizers():
            opt.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01),
                torch.optim.AdamW(self.b.parameters(), lr=0.01, weight_decay=0.1)]


def test_weight_decay_callback_watches_every_optimizer(tmp_path):
    trainer = L.Trainer(max_epochs=1, logger=WandbLogger(mode="offline", save_dir=tmp_path),
                        callbacks=[WeightDecayCallback()], enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(TwoOptimizers(), DataLoader([(x,) for x in torch.randn(8, 4)], batch_size=4))
    wandb.finish()
    rows = history(next((tmp_path / "wandb").glob("offline-run-*")))
    last = {k: v for row in rows for k, v in row.items()}  # each key's last value
    assert {k.split("/")[1] for k in last if k.startswith("wd/")} == {"opt0", "opt1"}
    assert last["wd/opt1/decay_factor"] == pytest.approx(1 - 0.01 * 0.1, abs=1e-6)
    assert last["wd/opt0/decay_factor_theory"] == pytest.approx(1 - 0.1 * 0.01 / 0.1)
