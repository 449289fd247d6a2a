"""A stranger's own loop, written from docs/plugins.md alone: two conv stems, two param groups,
gradient accumulation, StepLR, AdamW on one model and momentum SGD with coupled decay on another,
two probes and every panel in one run, the user's own rows logged both ways. Every row of issue
18's table is checked here, except Lightning's (tests/callbacks/test_lightning.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from torch import nn

from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters
from dlhw.callbacks.weight_decay import WeightDecayProbe
from dlhw.tracking.readback import records, run_summary

ITERS, EPOCH = 40, 20  # iterations; panels log every EPOCH iterations
LR_B, WD_B, MU = 0.05, 5e-4, 0.9


class TwoStems(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(16, 3, 1)  # a 1x1 classifier conv, registered before the stems
        self.stem_a = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.stem_b = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.stem_a(x), self.stem_b(x)], 1)).mean((2, 3))


def read(run_dir: Path) -> tuple[list[dict], dict[str, str]]:
    """History rows, and each defined key's step metric."""
    rows, axes = [], {}
    for r in records(run_dir):
        if r.get("type") == "history":
            rows.append(r["history"]["item"])
        elif r.get("type") == "metric" and "step_metric" in r["metric"]:
            axes[r["metric"]["name"]] = r["metric"]["step_metric"]
    return rows, axes


def run_dir_of(tmp_path: Path) -> Path:
    return next((tmp_path / "wandb").glob("offline-run-*"))


def train(run, *, with_step: bool) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    a, b = TwoStems(), TwoStems()
    opt_a = torch.optim.AdamW([{"params": [*a.stem_a.parameters(), *a.head.parameters()], "lr": 3e-3, "weight_decay": 0.05},
                               {"params": a.stem_b.parameters(), "lr": 1e-2, "weight_decay": 0.2}])
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=10, gamma=0.5)
    opt_b = torch.optim.SGD(b.parameters(), lr=LR_B, momentum=MU, weight_decay=WD_B)
    probe_a, probe_b = WeightDecayProbe(opt_a, prefix="wd/a"), WeightDecayProbe(opt_b, prefix="wd/b")
    filters = LearnedFilters(a, layer="stem_a.0")
    maps = FeatureMaps(a, x[:2], layers=["stem_a.1", a.stem_b[0]])
    for i in range(ITERS):
        idx = torch.arange(16) + 16 * (i % 4)
        loss_a = nn.functional.cross_entropy(a(x[idx]), y[idx]) / 2  # accumulated over two batches
        loss_a.backward()
        if i % 2 == 1:
            opt_a.step()
            opt_a.zero_grad()
            sched.step()
        loss_b = nn.functional.cross_entropy(b(x[idx]), y[idx])
        opt_b.zero_grad()
        loss_b.backward()
        opt_b.step()
        if (i + 1) % EPOCH == 0:
            epoch = (i + 1) // EPOCH
            probe_b.curvature(lambda: nn.functional.cross_entropy(b(x[:16]), y[:16]), model=b, iters=3)
            filters.log(step=epoch)
            maps.log(step=epoch)
        metrics = {"user/loss_a": loss_a.item(), "user/loss_b": loss_b.item()}
        run.log(metrics, step=i) if with_step else run.log(metrics)
    with torch.no_grad():
        ConfusionMatrix(["0", "1", "2"]).log(y, a(x).argmax(1))


@pytest.mark.parametrize("with_step", [True, False], ids=["user-step", "user-no-step"])
def test_users_rows_survive_beside_every_plugin_and_the_numbers_are_true(tmp_path, with_step):
    with wandb.init(mode="offline", dir=tmp_path, project="outsider") as run:
        train(run, with_step=with_step)
        assert wandb.run is run
    run_dir = run_dir_of(tmp_path)
    rows, axes = read(run_dir)
    # Every one of the user's rows, at the user's own steps.
    assert [r["_step"] for r in rows if "user/loss_a" in r] == list(range(ITERS))
    # Each plugin on its own axis, every step of it sent.
    assert axes["wd/a/decay_factor"] == "wd/a/step" and axes["wd/b/decay_factor"] == "wd/b/step"
    assert axes["viz/conv1_filters"] == axes["viz/feature_maps"] == "viz/step"
    assert axes["test/confusion_matrix"] == "test/step"
    assert [r["wd/a/step"] for r in rows if "wd/a/decay_factor" in r] == list(range(1, ITERS // 2 + 1))
    steps = [r["wd/b/step"] for r in rows if "wd/b/decay_factor" in r]
    # With step=, W&B keeps the user's row 0 open until step 1 arrives, after probe b's second
    # step: that row holds both steps' mean (docs/plugins.md); every other step has its own row.
    assert steps == (list(range(2, ITERS + 1)) if with_step else list(range(1, ITERS + 1)))
    assert [r["viz/step"] for r in rows if "viz/conv1_filters._type" in r] == [1, 2]
    assert [r["viz/conv1_filters.caption"] for r in rows if "viz/conv1_filters._type" in r] == \
        [f"stem_a.0 at step {e}" for e in (1, 2)]
    assert [r["viz/feature_maps.increment_num"] for r in rows if "viz/feature_maps._type" in r] == [0, 1]
    assert any("test/confusion_matrix_table._type" in r for r in rows)
    assert sum("wd/b/hessian_top_eig" in r for r in rows) == 2
    # AdamW, two groups, lr halved by StepLR: each group shrinks by exactly 1 - lr*lambda.
    for r in (r for r in rows if "wd/a/decay_factor" in r):
        for g in (0, 1):
            assert r[f"wd/a/group{g}/decay_factor"] == pytest.approx(r[f"wd/a/group{g}/decay_factor_theory"], abs=1e-6)
        assert r["wd/a/group0/decay_factor"] > r["wd/a/decay_factor"] > r["wd/a/group1/decay_factor"]
        assert r["wd/a/decay_factor"] == pytest.approx(r["wd/a/decay_factor_theory"], abs=1e-6)
    thetas = [r["wd/a/group1/decay_factor_theory"] for r in rows if "wd/a/decay_factor" in r]
    assert thetas[0] == pytest.approx(1 - 1e-2 * 0.2) and thetas[-1] == pytest.approx(1 - 5e-3 * 0.2)
    # Momentum SGD with coupled decay: the buffer's decay counts, 1 - lr*lambda/(1 - mu) in steady state.
    theory = 1 - LR_B * WD_B / (1 - MU)
    late = [r["wd/b/decay_factor"] for r in rows if "wd/b/decay_factor" in r][-5:]
    assert all(1 - f == pytest.approx(1 - theory, rel=0.05) for f in late)
    summary = run_summary(run_dir)["summary"]
    assert "momentum" in summary["wd/b/theory"] and "decoupled" in summary["wd/a/theory"]


def test_plugins_alone_in_a_run_keep_their_last_values_and_every_picture(tmp_path):
    torch.manual_seed(0)
    model = TwoStems()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    with wandb.init(mode="offline", dir=tmp_path, project="outsider"):
        probe = WeightDecayProbe(opt)
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(4, 1, 8, 8)).sum().backward()
            opt.step()
        filters = LearnedFilters(model)
        filters.log()
        filters.log()
        norm = probe.weight_norm()
    rows, _ = read(run_dir_of(tmp_path))
    assert len(rows) == 1  # nobody committed a row: one row, written at the end
    row = rows[0]
    assert row["wd/step"] == 5 and row["wd/weight_norm"] == pytest.approx(norm)
    assert row["wd/decay_factor"] == pytest.approx(1 - 0.1 * 0.01, abs=1e-6)  # the mean over the 5 steps
    assert row["viz/step"] == 2 and row["viz/conv1_filters.count"] == 2  # both pictures, side by side
    assert row["viz/conv1_filters.captions"] == ["head at step 1", "head at step 2"]  # the first conv, by its name


def test_no_run_refuses_before_the_weights_change():
    assert wandb.run is None
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    WeightDecayProbe(opt)
    w.sum().backward()
    with pytest.raises(RuntimeError, match="no active W&B run; call wandb.init"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and not opt.state


def test_layers_are_checked_when_the_panel_is_made():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="Sequential has no Conv2d layer to show"):
        LearnedFilters(mlp)
    with pytest.raises(ValueError, match="has no Conv2d"):
        FeatureMaps(mlp, torch.rand(2, 1, 8, 8))
    model = TwoStems()
    with pytest.raises(ValueError, match=r"'head' outputs shape \(1, 3\)|not \(N, C, H, W\)"):
        FeatureMaps(nn.Sequential(model, nn.Linear(3, 3)), torch.rand(2, 1, 8, 8), layers=["1"])
    with pytest.raises(ValueError, match="is a ReLU, not a Conv2d"):
        LearnedFilters(model, layer="stem_a.1")
    with pytest.raises(ValueError, match=r"no layer 'stem_c.0' in TwoStems \(did you mean .*stem_a.0"):
        LearnedFilters(model, layer="stem_c.0")
    assert LearnedFilters(model, layer=model.stem_b[0]).name == "stem_b.0"


def test_a_users_own_callbacks_and_core_modules_do_not_shadow_the_suite(tmp_path):
    (tmp_path / "callbacks.py").write_text("raise SystemExit('the user callbacks.py was imported')\n")
    (tmp_path / "core.py").write_text("raise SystemExit('the user core.py was imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import callbacks" if False else
                           "from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters; "
                           "from dlhw.callbacks.weight_decay import WeightDecayProbe; print('ok')"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    # The user's modules are still theirs in the same folder.
    mine = subprocess.run([sys.executable, "-c", "import core"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "the user core.py was imported" in mine.stderr
