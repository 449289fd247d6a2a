"""The weight-decay probe's stability bound, checked on the quadratic it is derived for: SGD with
momentum and each decay mode, run with torch's own optimizer just below and just above the bound."""

from __future__ import annotations

import pytest
import torch

from dlhw.callbacks.weight_decay import stability_bound

LR, LAMBDA, MOMENTUM, STEPS = 0.1, 2.0, 0.9, 1000


def _final_size(mode: str, beta: float) -> float:
    """|w| after STEPS steps from w = 1 on the loss beta/2 w^2 with decay lambda in ``mode``: the
    steps the classification trainer takes (l2 in the loss, coupled in SGD's weight_decay,
    decoupled as w *= 1 - lr lambda before the optimizer's step)."""
    w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=LR, momentum=MOMENTUM, weight_decay=LAMBDA if mode == "coupled" else 0.0)
    for _ in range(STEPS):
        loss = 0.5 * beta * w.pow(2).sum()
        if mode == "l2":
            loss = loss + 0.5 * LAMBDA * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        if mode == "decoupled":
            with torch.no_grad():
                w.mul_(1 - LR * LAMBDA)
        opt.step()
        if not torch.isfinite(w).all():
            return float("inf")
    return float(w.detach().abs())


def _beta_at(sharpness: float) -> float:
    """The curvature beta at which lr * (beta + lambda) equals ``sharpness``."""
    return sharpness / LR - LAMBDA


@pytest.mark.parametrize("mode", ["l2", "coupled", "decoupled"])
def test_bound_separates_convergence_from_divergence(mode):
    bound = stability_bound(optimizer="sgd", momentum=MOMENTUM, wd_mode=mode, lr=LR, weight_decay=LAMBDA)
    assert _final_size(mode, _beta_at(0.99 * bound)) < 1e-3
    assert _final_size(mode, _beta_at(1.01 * bound)) > 1e3


def test_decoupled_bound_is_lower_than_the_coupled_one_by_momentum_lr_lambda():
    coupled = stability_bound(optimizer="sgd", momentum=MOMENTUM, wd_mode="coupled", lr=LR, weight_decay=LAMBDA)
    decoupled = stability_bound(optimizer="sgd", momentum=MOMENTUM, wd_mode="decoupled", lr=LR, weight_decay=LAMBDA)
    assert coupled == pytest.approx(2 * (1 + MOMENTUM)) and decoupled == pytest.approx(coupled - MOMENTUM * LR * LAMBDA)
    # Between the two bounds the coupled bound would call decoupled decay stable; it diverges.
    assert _final_size("decoupled", _beta_at((coupled + decoupled) / 2)) > 1e3
    assert _final_size("coupled", _beta_at((coupled + decoupled) / 2)) < 1e-3


def test_without_momentum_every_mode_has_the_plain_bound_and_adam_a_reference():
    for mode in ("l2", "coupled", "decoupled"):
        assert stability_bound(optimizer="sgd", momentum=0.0, wd_mode=mode, lr=LR, weight_decay=LAMBDA) == 2.0
    assert stability_bound(optimizer="adam", momentum=0.0, wd_mode="decoupled", lr=LR, weight_decay=LAMBDA) == 2.0
