"""The plain panels and the weight-decay probe in a plain loop, without any trainer of the suite."""

from __future__ import annotations

import math

import pytest
import torch
import wandb
from torch import nn

from dlhw.callbacks.panels import ConfusionMatrix, DetectionTable, FeatureMaps, FilterTable, LearnedFilters, PhotoComparison
from dlhw.callbacks.weight_decay import WeightDecayProbe
from dlhw.trainers.classification import SGDW

LR, LAMBDA = 0.1, 0.5


def loop(make_optimizer, *, l2: float = 0.0, steps: int = 3, every: int = 1) -> tuple[list[dict], WeightDecayProbe]:
    """A tiny model trained by a plain loop, the probe hooked on its optimizer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = make_optimizer(model.parameters())
    records: list[dict] = []
    probe = WeightDecayProbe(optimizer, l2=l2, params=list(model.parameters()) if l2 else None, every=every,
                             publish=records.append)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        if l2:
            loss = loss + 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.model, probe.batch = model, (x, y)
    return records, probe


@pytest.mark.parametrize("make,lr", [
    (lambda p: torch.optim.SGD(p, lr=LR, weight_decay=LAMBDA), LR),
    (lambda p: SGDW(p, lr=LR, momentum=0.9, weight_decay=LAMBDA), LR),
    (lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=LAMBDA), 0.01),
    (lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=LAMBDA, decoupled_weight_decay=True), 0.01),
], ids=["sgd", "sgdw-momentum", "adamw", "adam-decoupled"])
def test_measured_shrink_is_one_minus_lr_lambda_where_decay_is_a_shrink(make, lr):
    records, probe = loop(make)
    assert [r["wd/decay_factor_theory"] for r in records] == pytest.approx([1 - lr * LAMBDA] * 3)
    assert [r["wd/decay_factor"] for r in records] == pytest.approx([1 - lr * LAMBDA] * 3, abs=1e-6)
    assert records[-1]["wd/weight_norm"] == pytest.approx(probe.weight_norm())


@pytest.mark.parametrize("l2", [0.0, 0.05], ids=["coupled", "l2"])
def test_momentum_sgd_counts_the_decay_its_buffer_carries(l2):
    # The buffer piles up lambda*w from every earlier step: 1 - lr*lambda on the first step, then
    # towards the steady state 1 - lr*lambda/(1 - mu), ten times the shrink for mu = 0.9.
    wd = 0.0 if l2 else 0.05
    records, _ = loop(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=wd), l2=l2, steps=80)
    theory = 1 - 0.01 * 0.05 / (1 - 0.9)
    assert records[0]["wd/decay_factor"] == pytest.approx(1 - 0.01 * 0.05, abs=1e-7)
    assert records[-1]["wd/decay_factor_theory"] == pytest.approx(theory)
    assert 1 - records[-1]["wd/decay_factor"] == pytest.approx(1 - theory, rel=0.05)


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=0.05),
                                  lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05)], ids=["momentum", "adamw"])
def test_measuring_one_step_in_every_gives_the_same_factors(make):
    every_step, _ = loop(make, steps=6)
    thinned, _ = loop(make, steps=6, every=3)
    assert [r.get("wd/decay_factor") for r in thinned] == [None, None, every_step[2]["wd/decay_factor"],
                                                           None, None, every_step[5]["wd/decay_factor"]]


def test_plain_sgd_with_the_penalty_in_the_loss_shrinks_the_same():
    records, _ = loop(lambda p: torch.optim.SGD(p, lr=LR), l2=LAMBDA)
    assert [r["wd/decay_factor"] for r in records] == pytest.approx([1 - LR * LAMBDA] * 3, abs=1e-6)


@pytest.mark.parametrize("l2", [0.0, LAMBDA], ids=["coupled", "l2"])
def test_adam_rescales_decay_in_the_gradient_so_the_shrink_differs(l2):
    make = (lambda p: torch.optim.Adam(p, lr=0.01)) if l2 else (lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=LAMBDA))
    records, _ = loop(make, l2=l2)
    theory = 1 - 0.01 * LAMBDA
    # The first step's update is lr * sign-like for every weight, so lambda * w is divided by |g + lambda w|:
    # far more than lr * lambda of shrink, and not the same on each step.
    assert all(abs(r["wd/decay_factor"] - theory) > 1e-3 for r in records)
    assert len({round(r["wd/decay_factor"], 6) for r in records}) == 3
    assert math.isnan(records[0]["wd/decay_factor_theory"])  # no formula: measured only


def test_curvature_and_stability_bound_per_optimizer():
    _, probe = loop(lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, weight_decay=LAMBDA))
    x, y = probe.batch
    m = probe.curvature(lambda: nn.functional.cross_entropy(probe.model(x), y), probe.model.parameters(), iters=50)
    assert m["wd/stability_bound"] == pytest.approx(2 * 1.9)
    assert m["wd/lr_sharpness"] == pytest.approx(LR * (m["wd/hessian_top_eig"] + LAMBDA))
    _, probe = loop(lambda p: SGDW(p, lr=LR, momentum=0.9, weight_decay=LAMBDA))
    assert probe.curvature(lambda: nn.functional.cross_entropy(probe.model(x), y), iters=5)["wd/stability_bound"] == \
        pytest.approx(2 * 1.9 - 0.9 * LR * LAMBDA)


def test_probe_runs_a_closure_once_and_keeps_the_optimizers_result():
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=LAMBDA)
    records: list[dict] = []
    WeightDecayProbe(opt, publish=records.append)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 2.0, 3.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(6.0)
    assert len(calls) == 1 and records[0]["wd/decay_factor"] == pytest.approx(1 - 0.1 * LAMBDA, abs=1e-6)


def test_a_panel_without_a_run_says_what_to_do():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(RuntimeError, match="no active W&B run; call wandb.init"):
        LearnedFilters(model).log()
    with pytest.raises(ValueError, match="no Conv2d"):
        LearnedFilters(nn.Linear(2, 2))


def test_panels_log_against_their_own_axis_and_never_go_back(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    with wandb.init(mode="offline", dir=tmp_path, project="dlhw-tests") as run:
        filters = LearnedFilters(model)
        filters.log(step=2)
        with pytest.raises(ValueError, match="goes back"):
            filters.log(step=1)
        run.log({"train/loss": 1.0})  # the user's row, which the filters' picture joins
        FeatureMaps(model, torch.rand(2, 1, 8, 8), run=run).log(step=3)
        ConfusionMatrix(["a", "b"]).log([0, 1, 1], [0, 1, 0])
        assert wandb.run is run  # the panels neither finished nor replaced the user's run
    from dlhw.tracking.readback import history

    rows = history(next((tmp_path / "wandb").glob("offline-run-*")))
    assert [r["viz/step"] for r in rows if "viz/conv1_filters._type" in r] == [2]
    assert [r["viz/step"] for r in rows if "viz/feature_maps._type" in r] == [3]
    assert [r["_step"] for r in rows if "train/loss" in r] == [0]
    assert any("test/confusion_matrix_table._type" in r for r in rows)


def test_filter_detection_and_photo_panels_reach_the_run(tmp_path):
    from tests.conftest import logged_table

    image = torch.rand(3, 12, 16)
    target = {"boxes": torch.tensor([[1.0, 2.0, 9.0, 10.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(7)}
    output = {"boxes": torch.tensor([[1.0, 2.0, 8.0, 10.0], [3.0, 3.0, 6.0, 6.0]]), "labels": torch.tensor([1, 1]),
              "scores": torch.tensor([0.9, 0.6]), "masks": torch.rand(2, 1, 12, 16)}
    with wandb.init(mode="offline", dir=tmp_path, project="dlhw-tests"):
        FilterTable().log({"noise": image}, {"box": torch.full((3, 3), 1 / 9)})
        table = DetectionTable()
        table.log([image], [target], [output])
        table.log([image], [target], [output])
        photo = PhotoComparison()
        photo.log((image.permute(1, 2, 0) * 255).byte().numpy(), {"a": output, "b": {**output, "scores": torch.tensor([0.8, 0.75])}},
                  {"a": 12.0, "b": 30.0})
        table.cache.cleanup()
        photo.cache.cleanup()
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    outputs = logged_table(run_dir, "filters/outputs")
    assert outputs["columns"][:3] == ["image", "input", "filter"] and outputs["data"][0][2] == "box"
    predictions = logged_table(run_dir, "detect/predictions")
    assert [r[0] for r in predictions["data"]] == [2]  # the second log's increment: step 2
    assert predictions["data"][0][1:2] == [7] and predictions["data"][0][3:5] == [1, 2]
    rows = logged_table(run_dir, "detect/photo")["data"]
    assert [(r[0], r[2], r[3], r[5]) for r in rows] == [("a", 2, 1, 12.0), ("b", 2, 2, 30.0)]


def test_picture_folder_goes_with_the_panel_when_nobody_removes_it():
    import gc
    from pathlib import Path

    import numpy as np

    panel = PhotoComparison()
    path = panel.picture("a", np.zeros((4, 4, 3), np.uint8))
    assert panel.picture("a", np.ones((4, 4, 3), np.uint8)) == path  # written once, reused
    folder = Path(path).parent
    del panel
    gc.collect()
    assert not folder.exists()
