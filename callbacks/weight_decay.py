"""The weight-decay probe: what decay does to the weights, step by step, and whether the
learning rate is stable for the loss surface and lambda. It attaches to any
``torch.optim.Optimizer`` through the optimizer's own step hooks, so whatever loop calls
``optimizer.step()`` gets it:

.. code-block:: python

    probe = WeightDecayProbe(optimizer)          # logs to wandb.run after every step
    ...
    probe.curvature(lambda: loss_fn(model(x), y), model.parameters())

Logged per optimizer step (axis ``wd/step``, or the caller's ``step=``):

- ``wd/weight_norm``: global L2 norm of the decayed weights after the step.
- ``wd/decay_factor``: the factor the decay part of the step multiplied the weights by, measured
  on the weights. Before the step the probe replays it on copies with the optimizer's own class,
  settings and state but no decay; the decay part is what the real step did beyond that replay,
  and the factor is ``1 + <decay part, w_before> / |w_before|^2``. Decoupled decay (AdamW, SGDW)
  and any decay with plain SGD give ``1 - lr*lambda``; with Adam, decay in the gradient (l2,
  coupled) is rescaled by the update and the factor says by how much.
- ``wd/decay_factor_theory`` = ``1 - lr*lambda``, lr and lambda read from the optimizer's
  param_groups (``l2=`` names lambda when the penalty is in the loss).

Logged by :meth:`WeightDecayProbe.curvature`: ``wd/hessian_top_eig`` (beta, top eigenvalue of the
loss's Hessian), ``wd/lr_sharpness`` = lr * (beta + lambda) and ``wd/stability_bound``
(:func:`stability_bound`): gradient descent is stable along the sharpest direction only while the
sharpness stays below the bound.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from dlhw.callbacks.hessian import top_hessian_eigenvalue
from dlhw.callbacks.panels import Panel
from dlhw.core.events import STEP_AXIS, Callback, Loop


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


def _sq_norm(params: list[torch.Tensor]) -> torch.Tensor:
    # Per-tensor norms in the parameters' own precision (one fused pass), summed in float64.
    return torch.stack(torch._foreach_norm([p.detach() for p in params])).double().pow(2).sum()


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)).double() for x, y in zip(a, b)]).sum()


def _is_decoupled(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
    # AdamW, Adam(decoupled_weight_decay=True) and the suite's SGDW mark their groups the same way.
    return isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))


class WeightDecayProbe(Panel):
    """Measures every ``optimizer.step()`` of ``optimizer`` and logs it to the active W&B run.

    Args:
        optimizer: any ``torch.optim.Optimizer``; its param groups with ``weight_decay > 0`` are
            the decayed weights.
        l2: lambda of an ``lambda/2 * ||w||^2`` penalty the loop adds to its loss itself (the
            optimizer then has no weight_decay); ``params`` names the penalised weights.
        params: the decayed weights, when not every weight of a decaying group.
        every: measure one step in ``every`` (the replay costs about one optimizer step).
        run: the W&B run to log to (default ``wandb.run``); ``publish`` replaces W&B altogether.

    A ``closure`` given to ``step()`` (Lightning gives one) is called once by the probe, before the
    step, and its loss handed to the optimizer; closures that must run several times (LBFGS's)
    are not supported.
    """

    axis = "wd/step"

    def __init__(self, optimizer: torch.optim.Optimizer, *, l2: float = 0.0,
                 params: Iterable[torch.Tensor] | None = None, every: int = 1, run: Any = None,
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(run=run, publish=publish)
        self.optimizer, self.l2, self.every = optimizer, l2, every
        self.params = (list(params) if params is not None else
                       [p for g in optimizer.param_groups if g.get("weight_decay", 0) for p in g["params"]])
        mine = {id(p) for p in self.params}
        self.groups = [g for g in optimizer.param_groups if any(id(p) in mine for p in g["params"])]
        if not self.params:
            raise ValueError("WeightDecayProbe: no decayed parameters; give the optimizer a weight_decay or pass l2= and params=")
        self.steps = 0
        self.last: dict[str, float] = {}
        # (weights, their values before the step, the replay's values without decay) of the step under way
        self._pending: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._shadow: torch.optim.Optimizer | None = None
        self._handles = [optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after)]

    # -- what the optimizer says ----------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of the decayed weights now (a scheduler may have changed it)."""
        return float(self.groups[0]["lr"])

    @property
    def weight_decay(self) -> float:
        """lambda: the decaying group's weight_decay, or ``l2`` for a penalty in the loss."""
        return float(self.l2 or self.groups[0].get("weight_decay", 0.0))

    @property
    def decay_factor_theory(self) -> float:
        """The shrink ``1 - lr * lambda`` that SGD-style weight decay applies every step."""
        return 1.0 - self.lr * self.weight_decay

    def weight_norm(self) -> float:
        """Global L2 norm of the decayed weights."""
        return float(_sq_norm(self.params).sqrt())

    # -- the hooks --------------------------------------------------------------------------------
    def _replay_without_decay(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The step the optimizer would take from its current state with no decay, on copies."""
        opt = self.optimizer
        if self._shadow is None:
            copies = {id(p): torch.zeros_like(p, requires_grad=True) for p in self.params}
            groups = []
            for g in opt.param_groups:
                mine = [copies[id(p)] for p in g["params"] if id(p) in copies]
                if mine:
                    groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": mine, "weight_decay": 0.0})
            self._shadow = type(opt)(groups)
            self._copies = copies
        shadow = self._shadow
        for g, sg in zip((g for g in opt.param_groups if any(id(p) in self._copies for p in g["params"])),
                         shadow.param_groups):
            sg.update({k: v for k, v in g.items() if k not in ("params", "weight_decay")})
        out = []
        with torch.no_grad():
            for p in params:
                c = self._copies[id(p)]
                c.copy_(p)
                # The gradient the loss gave without its penalty: l2 added lambda * w to it.
                if c.grad is None:
                    c.grad = torch.empty_like(p.grad)
                c.grad.copy_(p.grad)
                if self.l2:
                    c.grad.sub_(p, alpha=self.l2)
                # The optimizer's state before this step, copied into the replay's own buffers
                # (reused from step to step: a fresh copy of Adam's two moments costs as much as the step).
                state, mine = opt.state.get(p, {}), shadow.state.get(c)
                if mine is None or mine.keys() != state.keys():
                    shadow.state[c] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                else:
                    for k, v in state.items():
                        if torch.is_tensor(v):
                            mine[k].copy_(v)
                        else:
                            mine[k] = v
                out.append(c)
            stepped = {id(c) for c in out}
            for c in self._copies.values():
                if id(c) not in stepped:
                    c.grad = None  # a weight without a gradient this step is not stepped in the replay either
        shadow.step()
        return out

    def _before(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self.steps += 1
        self._pending = None
        if self.steps % self.every:
            return None
        changed = None
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:
            # Loops that hand step() a closure (Lightning) compute the gradients inside it; run it
            # here, once, so the replay sees them, and give the optimizer its result instead.
            with torch.enable_grad():
                loss = closure()
            kwargs = {k: v for k, v in kwargs.items() if k != "closure"}
            changed = ((args[0], lambda: loss), kwargs)
        params = [p for p in self.params if p.grad is not None]
        if params:
            before = [p.detach().clone() for p in params]
            self._pending = (params, before, [c.detach() for c in self._replay_without_decay(params)])
        return changed

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        metrics = {"wd/weight_norm": self.weight_norm(), "wd/decay_factor_theory": self.decay_factor_theory}
        if self._pending is not None:
            params, before, without = self._pending
            decay_part = [p.detach() - w for p, w in zip(params, without)]
            metrics["wd/decay_factor"] = float(1 + _dot(decay_part, before) / _sq_norm(before))
            self._pending = None
        self.last = metrics
        self.send(metrics, step=self.steps)

    # -- curvature ----------------------------------------------------------------------------
    def curvature(self, loss: Callable[[], torch.Tensor], params: Iterable[torch.Tensor] | None = None, *,
                  iters: int = 10, tol: float = 1e-2, step: int | None = None) -> dict[str, float]:
        """Top Hessian eigenvalue of ``loss()`` (a closure over a fixed batch, without the decay
        term) in ``params`` (default: every parameter of the optimizer), the sharpness
        lr * (beta + lambda) and the stability bound for this optimizer and decay mode; logged and returned."""
        params = list(params) if params is not None else [p for g in self.optimizer.param_groups for p in g["params"]]
        beta, _ = top_hessian_eigenvalue(loss, params, iters=iters, tol=tol)
        group = self.groups[0]
        sgd = isinstance(self.optimizer, torch.optim.SGD)
        mode = "decoupled" if _is_decoupled(self.optimizer, group) else "coupled"
        metrics = {
            "wd/hessian_top_eig": beta,
            "wd/lr_sharpness": self.lr * (beta + self.weight_decay),
            "wd/stability_bound": stability_bound(optimizer="sgd" if sgd else "adam", momentum=float(group.get("momentum", 0.0)),
                                                  wd_mode=mode, lr=self.lr, weight_decay=self.weight_decay),
        }
        self.send(metrics, step=self.steps if step is None else step)
        return metrics

    def remove(self) -> None:
        """Detach from the optimizer."""
        for h in self._handles:
            h.remove()
        self._handles = []


class DecayProbeCallback(Callback):
    """The :class:`WeightDecayProbe` on the suite's classification trainer: every step's
    measurements against ``trainer/step``, and the curvature on the trainer's fixed training batch
    at the start, every ``hessian_every`` epochs (0: never) and at the end, into the run's summary too.
    ``every``: the decay factor is measured on one step in ``every`` (the weight norm on all)."""

    def __init__(self, *, hessian_every: int = 4, hessian_iters: int = 10, every: int = 1) -> None:
        self.hessian_every = hessian_every
        self.hessian_iters = hessian_iters
        self.every = every
        self.probe: WeightDecayProbe | None = None

    def on_fit_start(self, trainer: Loop) -> None:
        l2 = trainer.weight_decay if trainer.wd_mode == "l2" else 0.0
        self.probe = WeightDecayProbe(trainer.optimizer, l2=l2, params=trainer.decay_params, every=self.every,
                                      publish=lambda m: trainer.log(m, axis=STEP_AXIS))
        # A resumed fit counts on from its checkpoint, so "one step in every" picks the same steps.
        self.probe.steps = trainer.global_step
        if trainer.weight_decay and trainer.wd_mode != "decoupled" and (trainer.optimizer_name != "sgd" or trainer.momentum):
            print(
                f"wd/decay_factor: with {trainer.optimizer_name} (momentum {trainer.momentum:g}) {trainer.wd_mode} decay "
                f"passes through the optimizer's update, so the measured shrink of a step need not be 1 - lr*lambda; "
                f"use --wd-mode decoupled for a shrink of exactly that",
                file=sys.stderr,
            )
        if self.hessian_every and trainer.global_step == 0:  # the start of training, not of a resumed fit
            self._curvature(trainer)

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        done = epoch + 1
        if self.hessian_every and (done % self.hessian_every == 0 or done == trainer.epochs or trainer.should_stop):
            self._curvature(trainer)

    def on_fit_end(self, trainer: Loop) -> None:
        self.probe.remove()

    def on_exception(self, trainer: Loop, exception: BaseException) -> None:
        if self.probe is not None:
            self.probe.remove()

    def _curvature(self, trainer: Loop) -> None:
        loss, params = trainer.curvature_loss()
        metrics = self.probe.curvature(loss, params, iters=self.hessian_iters)
        trainer.summary.update(metrics)
        sharpness, bound = metrics["wd/lr_sharpness"], metrics["wd/stability_bound"]
        verdict = "above the bound: this lr is too large for the surface" if sharpness >= bound else "stable"
        if trainer.optimizer_name != "sgd":
            verdict += f"; the bound is SGD's, {trainer.optimizer_name} rescales the step"
        print(
            f"curvature at step {trainer.global_step}: beta = {metrics['wd/hessian_top_eig']:.4g}, "
            f"lr*(beta+lambda) = {sharpness:.4g} vs {bound:g} ({verdict})",
            file=sys.stderr,
        )
