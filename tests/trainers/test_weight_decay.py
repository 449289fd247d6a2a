"""Weight decay three ways on the real trainer step, the parameter split, and the Hessian estimate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dlhw.callbacks.weight_decay import top_hessian_eigenvalue
from dlhw.callbacks.weight_decay import WeightDecayProbe
from dlhw.trainers.classification import RECIPES, AlexNetSettings, ClassificationTrainer, param_groups
from dlhw.trainers.datasets import Splits, make_loaders
from dlhw.trainers.settings import make

LR, LAMBDA = 0.1, 0.5


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def tiny_loaders(batch_size: int = 16):
    rng = np.random.default_rng(0)
    part = lambda n: (rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, n))  # noqa: E731
    splits = Splits(part(32), part(8), part(8), ["a", "b", "c"], flips=False)
    return make_loaders(splits, size=8, batch_size=batch_size, augment=False, seed=0)


def trainer(model=None, **kw) -> ClassificationTrainer:
    kw = {**RECIPES["digits"], "recipe": "digits", "epochs": 1, "optimizer": "sgd", "lr": LR, "weight_decay": LAMBDA,
          "wd_mode": "coupled", **kw}
    return ClassificationTrainer(model or tiny_model(), tiny_loaders(), make(AlexNetSettings, kw))


def probed(t: ClassificationTrainer) -> list[dict]:
    """What a weight-decay probe on the trainer's optimizer records, one dict per step."""
    records: list[dict] = []
    WeightDecayProbe(t.optimizer, l2=t.weight_decay if t.wd_mode == "l2" else 0.0, params=t.decay_params,
                     publish=records.append)
    return records


def trajectory(steps: int = 4, **kw) -> tuple[list[torch.Tensor], list[dict]]:
    t = trainer(**kw)
    x, y = next(iter(t.loaders.train))
    outs = [t.train_step(x, y) for _ in range(steps)]
    return [p.detach().clone() for p in t.model.parameters()], outs


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_l2_and_coupled_follow_the_same_trajectory(momentum):
    l2, _ = trajectory(wd_mode="l2", momentum=momentum)
    coupled, _ = trajectory(wd_mode="coupled", momentum=momentum)
    for a, b in zip(l2, coupled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if momentum == 0:  # plain SGD: decoupled is the same update too
        decoupled, _ = trajectory(wd_mode="decoupled")
        for a, b in zip(l2, decoupled):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [dict(wd_mode="l2"), dict(wd_mode="coupled"), dict(wd_mode="decoupled"),
     dict(wd_mode="decoupled", momentum=0.9), dict(optimizer="adamw", wd_mode="decoupled", lr=0.01)],
)
def test_decay_part_of_each_step_is_one_minus_lr_lambda(kw):
    t = trainer(**kw)
    records = probed(t)
    x, y = next(iter(t.loaders.train))
    for i in range(3):
        t.train_step(x, y)
        assert records[i]["wd/decay_factor"] == pytest.approx(1 - t.optimizer.param_groups[0]["lr"] * LAMBDA, abs=1e-6)
        norm = float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in t.decay_params)))
        assert records[i]["wd/weight_norm"] == pytest.approx(norm)
        assert records[i]["wd/decay_factor_theory"] == pytest.approx(1 - t.optimizer.param_groups[0]["lr"] * LAMBDA)


@pytest.mark.parametrize("mode", ["l2", "coupled"])
def test_adam_with_decay_in_the_gradient_shrinks_by_other_than_one_minus_lr_lambda(mode):
    t = trainer(optimizer="adam", wd_mode=mode, lr=0.01)
    records = probed(t)
    x, y = next(iter(t.loaders.train))
    for _ in range(3):
        t.train_step(x, y)
    assert all(abs(r["wd/decay_factor"] - (1 - t.optimizer.param_groups[0]["lr"] * LAMBDA)) > 1e-3 for r in records)


def test_adamw_mode_matches_torch_adamw():
    ours = trainer(optimizer="adamw", wd_mode="decoupled", lr=0.01)
    model = tiny_model()
    decay, no_decay = param_groups(model)
    ref = torch.optim.AdamW([{"params": [p for _, p in decay], "weight_decay": LAMBDA},
                             {"params": [p for _, p in no_decay], "weight_decay": 0.0}], lr=0.01, fused=True)
    x, y = next(iter(ours.loaders.train))
    for _ in range(4):
        ours.train_step(x, y)
        ref.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        ref.step()
    for a, b in zip(ours.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_biases_and_norm_weights_are_not_decayed():
    model = tiny_model()
    decay, no_decay = param_groups(model)
    assert [n for n, _ in decay] == ["0.weight", "4.weight"]
    assert [n for n, _ in no_decay] == ["0.bias", "1.weight", "1.bias", "4.bias"]
    assert len(param_groups(model, decay_all=True)[0]) == 6
    t = trainer(wd_mode="decoupled")
    assert t.config["_param_groups"] == {"decay_tensors": 2, "decay_params": 4 * 9 + 3 * 256,
                                        "no_decay_tensors": 4, "no_decay_params": 4 + 8 + 3}
    # One decoupled step: decayed tensors shrink by 1 - lr*lambda, the others take the plain gradient step.
    reference = copy.deepcopy(t.model)
    x, y = next(iter(t.loaders.train))
    nn.functional.cross_entropy(reference(x), y).backward()
    t.train_step(x, y)
    decayed = {id(p) for p in t.decay_params}
    for p, r in zip(t.model.parameters(), reference.parameters()):
        shrink = 1 - LR * LAMBDA if id(p) in decayed else 1.0
        torch.testing.assert_close(p, shrink * r.detach() - LR * r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eigenvalues", [[5.0, 2.0, -1.0, 0.5, 0.1], [-6.0, 3.0, 1.0, 0.2, -0.5]])
def test_hessian_estimate_matches_exact_top_eigenvalue_of_a_quadratic(eigenvalues):
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    eig = top_hessian_eigenvalue(lambda: 0.5 * x @ a @ x + b @ x, [x], iters=500, tol=1e-12)
    assert eig == pytest.approx(float(torch.linalg.eigvalsh(a).max()), rel=1e-6)


def test_trainer_curvature_matches_the_full_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # softmax regression: small enough for the full Hessian
    t = trainer(model, wd_mode="coupled", hessian_batch=16)
    x, y = t.loaders.fixed_batch("train", 16)
    params = dict(model.named_parameters())

    def loss(*flat):
        return nn.functional.cross_entropy(torch.func.functional_call(model, dict(zip(params, flat)), (x,)), y)

    blocks = torch.autograd.functional.hessian(loss, tuple(params.values()))
    sizes = [p.numel() for p in params.values()]
    full = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                      for i in range(len(sizes))])
    exact = float(torch.linalg.eigvalsh(full.double()).max())
    loss, params = t.curvature_loss()
    assert top_hessian_eigenvalue(loss, params, iters=500, tol=1e-9) == pytest.approx(exact, rel=1e-4)


def test_l2_penalty_raises_every_curvature_by_lambda():
    # The Hessian of L + lambda/2 ||w||^2 is H + lambda I: each eigenvalue, the top one included,
    # moves up by exactly lambda.
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([3.0, 1.0, 0.5, -0.2], dtype=torch.float64)) @ q.T
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    lam = 0.7
    eig = top_hessian_eigenvalue(lambda: 0.5 * x @ a @ x + 0.5 * lam * x @ x, [x], iters=500, tol=1e-12)
    assert eig == pytest.approx(3.0 + lam, rel=1e-6)


def test_adam_l2_decays_large_gradient_weights_less_while_adamw_shrinks_all_by_one_minus_lr_lambda():
    # Two weights of equal size, one with a 100x larger data gradient. Adam divides lambda * w by
    # the gradient's RMS, so the decay it adds is scaled away (the more, the larger the gradient);
    # decoupled decay shrinks both by 1 - lr*lambda per step.
    lr, lam = 1e-3, 0.1
    scales = torch.tensor([100.0, 1.0], dtype=torch.float64)

    def decay_part(optimizer_cls, **kw):
        # The step minus the step the same optimizer takes without decay: what decay did.
        moved = []
        for decay in (lam, 0.0):
            w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
            opt = optimizer_cls([w], lr=lr, weight_decay=decay, **kw)
            for _ in range(5):
                opt.zero_grad()
                (scales * w).sum().backward()
                opt.step()
            moved.append(w.detach().clone())
        return moved[1] - moved[0]

    adam = decay_part(torch.optim.Adam)
    adamw = decay_part(torch.optim.AdamW)
    assert adam.abs().max() < 1e-3 * 5 * lr * lam and abs(adam[0]) < abs(adam[1])
    assert adamw[0] == pytest.approx(float(adamw[1]), rel=1e-3)
    assert float(adamw[1]) == pytest.approx(5 * lr * lam, rel=1e-2)  # 5 shrinks of 1 - lr*lambda, w ~ 1
