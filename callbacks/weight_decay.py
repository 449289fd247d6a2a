"""The weight-decay probe: what decay does to the weights, step by step, and whether the
learning rate is stable for the loss surface and lambda.

Logged against ``trainer/step``:

- ``wd/weight_norm``: global L2 norm of the decayed weights after each step.
- ``wd/decay_factor``: the factor the decay part of each step multiplied the weights by, measured
  on the weights themselves, beside ``wd/decay_factor_theory`` = 1 - lr * lambda. Only where the
  decay part can be separated from the gradient part (decoupled decay; l2 / coupled with plain
  SGD); with Adam or momentum, l2 / coupled decay is mixed into the optimizer's update.
- ``wd/hessian_top_eig`` (beta, top eigenvalue of the training loss's Hessian on a fixed batch),
  ``wd/lr_sharpness`` = lr * (beta + lambda) and ``wd/stability_bound`` (:func:`stability_bound`):
  gradient descent is stable along the sharpest direction only while the sharpness stays below
  the bound. Estimated at the start, every few epochs and at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from core.events import Callback, Loop, STEP_AXIS


def stability_bound(*, optimizer: str, momentum: float, wd_mode: str, lr: float, weight_decay: float) -> float:
    """The largest ``lr * (beta + lambda)`` for which SGD is stable on a quadratic of curvature beta.

    Heavy-ball momentum mu (``v <- mu v + g; w <- w - lr v``) with the decay in the gradient
    (l2, coupled) is the linear recursion of curvature beta + lambda, stable while
    lr * (beta + lambda) < 2 (1 + mu). Decoupled decay (``w <- (1 - lr lambda) w`` before the
    momentum step, as SGDW does it) keeps lambda out of the momentum buffer: the recursion's
    characteristic polynomial is z^2 - (c + mu - lr beta) z + c mu with c = 1 - lr lambda, whose
    root at z = -1 gives lr beta < (1 + c)(1 + mu), i.e. lr * (beta + lambda) < 2 (1 + mu) - mu lr lambda.
    Both agree without momentum. For Adam the value (2) is only a reference: Adam rescales every
    coordinate's step.
    """
    if optimizer != "sgd":
        return 2.0
    bound = 2.0 * (1.0 + momentum)
    if wd_mode == "decoupled":
        bound -= momentum * lr * weight_decay
    return bound


class WeightDecayProbe(Callback):
    """Logs the decay measurements of every step and the curvature-based stability margin.

    ``hessian_every``: epochs between curvature estimates (0: none); ``hessian_iters``: power
    iterations per estimate. Works with trainers that have ``measure_decay``,
    ``decay_factor_theory``, ``decay_separable`` and ``hessian_top_eigenvalue`` (the
    classification trainer).
    """

    def __init__(self, *, hessian_every: int = 4, hessian_iters: int = 10) -> None:
        self.hessian_every = hessian_every
        self.hessian_iters = hessian_iters

    def on_fit_start(self, trainer: Loop) -> None:
        trainer.measure_decay = True
        if not trainer.decay_separable and trainer.weight_decay:
            print(
                f"wd/decay_factor not logged: with {trainer.optimizer_name} (momentum {trainer.momentum:g}) "
                f"{trainer.wd_mode} decay passes through the optimizer's update, so no step has a separate "
                f"1 - lr*lambda shrink; use --wd-mode decoupled to get one",
                file=sys.stderr,
            )
        if self.hessian_every:
            self._curvature(trainer)

    def on_batch_end(self, trainer: Loop, batch_idx: int, outputs: Mapping[str, Any]) -> None:
        metrics = {"wd/weight_norm": outputs["weight_norm"], "wd/decay_factor_theory": trainer.decay_factor_theory}
        if "decay_factor" in outputs:
            metrics["wd/decay_factor"] = outputs["decay_factor"]
        trainer.log(metrics, axis=STEP_AXIS)

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        done = epoch + 1
        if self.hessian_every and (done % self.hessian_every == 0 or done == trainer.epochs or trainer.should_stop):
            self._curvature(trainer)

    def _curvature(self, trainer: Loop) -> None:
        beta = trainer.hessian_top_eigenvalue(self.hessian_iters)
        sharpness = trainer.lr * (beta + trainer.weight_decay)
        sgd = trainer.optimizer_name == "sgd"
        bound = stability_bound(optimizer=trainer.optimizer_name, momentum=trainer.momentum, wd_mode=trainer.wd_mode,
                                lr=trainer.lr, weight_decay=trainer.weight_decay)
        metrics = {"wd/hessian_top_eig": beta, "wd/lr_sharpness": sharpness, "wd/stability_bound": bound}
        trainer.log(metrics, axis=STEP_AXIS)
        trainer.summary.update(metrics)
        verdict = "above the bound: this lr is too large for the surface" if sharpness >= bound else "stable"
        if not sgd:
            verdict += f"; the bound is SGD's, {trainer.optimizer_name} rescales the step"
        print(
            f"curvature at step {trainer.global_step}: beta = {beta:.4g}, lr*(beta+lambda) = {sharpness:.4g} "
            f"vs {bound:g} ({verdict})",
            file=sys.stderr,
        )
