"""The weight-decay probe on any optimizer's step hooks, and the stability bound (docs/plugins.md, docs/theory.md)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from dlhw.callbacks.panels import Panel, untouched
from dlhw.core.events import STEP_AXIS, Callback, Session


def stability_bound(*, optimizer: str, momentum: float, wd_mode: str, lr: float, weight_decay: float) -> float:
    """The largest stable ``lr * (beta + lambda)`` for heavy-ball SGD (docs/theory.md); for Adam only a reference."""
    if optimizer != "sgd":
        return 2.0
    return 2.0 * (1.0 + momentum) - (momentum * lr * weight_decay if wd_mode == "decoupled" else 0.0)


def _sq_norm(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm([p.detach() for p in params])).double().pow(2).sum()


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)).double() for x, y in zip(a, b)]).sum()


def _power_iteration(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], *, shift: float, iters: int,
                     tol: float, seed: int) -> float:
    """Dominant eigenvalue of H - shift * I (largest magnitude)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    norm = _dot(v, v).sqrt()
    v = [x / norm for x in v]
    eig = 0.0
    for i in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        hv = [h - shift * x for h, x in zip(hv, v)]
        new = float(_dot(hv, v))  # Rayleigh quotient with |v| = 1
        norm = _dot(hv, hv).sqrt()
        if norm == 0:
            return 0.0
        v = [x.detach() / norm for x in hv]
        if i and abs(new - eig) <= tol * max(abs(new), 1e-12):
            return new
        eig = new
    return eig


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], *, iters: int = 20,
                           tol: float = 1e-3) -> float:
    """The largest Hessian eigenvalue of ``loss_fn()`` in ``params`` (past a saddle's negative one: ``H - mu * I``)."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    mu = _power_iteration(grads, params, shift=0.0, iters=iters, tol=tol, seed=0)
    return mu if mu >= 0 else mu + _power_iteration(grads, params, shift=mu, iters=iters, tol=tol, seed=1)


def _is_decoupled(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
    return isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))


def theory(optimizer: torch.optim.Optimizer, group: Mapping[str, Any], l2: float = 0.0) -> tuple[float, str]:
    """The per-step shrink decay should give ``group``'s weights, and its formula's name (NaN: none known)."""
    lam = float(l2 or group.get("weight_decay", 0.0))
    lr = float(group["lr"])
    if _is_decoupled(optimizer, group):
        return 1.0 - lr * lam, "1 - lr*lambda (decoupled)"
    if isinstance(optimizer, torch.optim.SGD):
        mu, d = float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0))
        if not mu:
            return 1.0 - lr * lam, "1 - lr*lambda (SGD)"
        formula = "1 - lr*lambda*(1-dampening)/(1-momentum) (momentum SGD, steady state)"
        return 1.0 - lr * lam * (1 - d) / (1 - mu), formula
    return float("nan"), f"none: {type(optimizer).__name__} rescales decay in the gradient; measured only"


class WeightDecayProbe(Panel):
    """Measures ``optimizer.step()`` against a decay-free shadow optimizer with its own state (docs/plugins.md)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, l2: float = 0.0,
                 params: Iterable[torch.Tensor] | None = None, prefix: str = "wd", every: int = 1, run: Any = None,
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(run=run, publish=publish)
        self.optimizer, self.l2, self.every, self.prefix, self.axis = optimizer, l2, every, prefix, f"{prefix}/step"
        self.params = list(params) if params is not None else [
            p for g in optimizer.param_groups if g.get("weight_decay", 0) for p in g["params"]]
        if not self.params:
            raise ValueError("WeightDecayProbe: no decayed parameters; "
                             "give the optimizer a weight_decay or pass l2= and params=")
        mine = {id(p) for p in self.params}
        # (index in optimizer.param_groups, the group, its decayed weights)
        self.groups = [(i, g, ps) for i, g in enumerate(optimizer.param_groups)
                       if (ps := [p for p in g["params"] if id(p) in mine])]
        copies = {id(p): torch.zeros_like(p, requires_grad=True) for p in self.params}
        self._copies = [copies[id(p)] for p in self.params]
        self._shadow = type(optimizer)([{**{k: v for k, v in g.items() if k != "params"}, "weight_decay": 0.0,
                                         "params": [copies[id(p)] for p in ps]} for _, g, ps in self.groups])
        sgd = isinstance(optimizer, torch.optim.SGD)
        self._state_free = all((sgd and not g.get("momentum")) or (_is_decoupled(optimizer, g) and not l2)
                               for _, g, _ in self.groups)
        self.steps = 0
        self._weights: list[torch.Tensor] | None = None
        self._noted = False
        self._handles = [optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after)]

    def weight_norm(self) -> float:
        return float(_sq_norm(self.params).sqrt())

    def _before(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.publish is None:
            self._active_run()  # no run: refuse before the weights change
        changed = None
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:
            # A closure (Lightning's) computes the gradients: run it once, here, so the shadow sees them.
            with torch.enable_grad():
                loss = closure()
            kwargs = {k: v for k, v in kwargs.items() if k != "closure"}
            changed = ((args[0], lambda: loss), kwargs)
        self.steps += 1
        measured = self.steps % self.every == 0
        if not measured and self._state_free:
            self._weights = None
            return changed
        with torch.no_grad():
            for p, c in zip(self.params, self._copies):
                # A weight without a gradient is not stepped by the optimizer, nor by the shadow.
                c.grad = None if p.grad is None else (p.grad - self.l2 * p if self.l2 else p.grad)
                c.copy_(p)
            # Where the decay never enters the optimizer's state, the shadow's state is the real one, copied on the
            # measured steps only. Else the shadow keeps its own, from the optimizer's when attached mid-training.
            if self._state_free or (not self._shadow.state and optimizer.state):
                for p, c in zip(self.params, self._copies):
                    state, mine = optimizer.state.get(p, {}), self._shadow.state.get(c)
                    if mine is None or mine.keys() != state.keys():
                        self._shadow.state[c] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                    else:  # in place: copy_ returns the shadow's own tensor
                        mine.update((k, mine[k].copy_(v) if torch.is_tensor(v) else v) for k, v in state.items())
            for sg, (_, g, _) in zip(self._shadow.param_groups, self.groups):
                sg.update({k: v for k, v in g.items() if k not in ("params", "weight_decay")})
        self._shadow.step()  # the copies now hold the shadow's weights after its step
        self._weights = [p.detach().clone() for p in self.params] if measured else None
        return changed

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        p = self.prefix
        metrics = {f"{p}/weight_norm": self.weight_norm()}
        if self._weights is not None:
            num = den = theory_num = 0.0
            per_group = len(self.groups) > 1
            index = {id(w): i for i, w in enumerate(self.params)}
            for gi, g, ps in self.groups:
                before = [self._weights[index[id(w)]] for w in ps]
                decay_part = [w.detach() - self._copies[index[id(w)]].detach() for w in ps]
                n, d = float(_dot(decay_part, before)), float(_sq_norm(before))
                t, _ = theory(self.optimizer, g, self.l2)
                num, den, theory_num = num + n, den + d, theory_num + t * d
                if per_group:
                    metrics[f"{p}/group{gi}/decay_factor"] = 1 + n / d
                    metrics[f"{p}/group{gi}/decay_factor_theory"] = t
            # Pooled over groups, each weighted by its squared weight norm (the theory the same way).
            metrics[f"{p}/decay_factor"] = 1 + num / den
            metrics[f"{p}/decay_factor_theory"] = theory_num / den
            self._weights = None
        if self.publish is None and not self._noted:
            self._noted = True
            self._active_run().summary[f"{p}/theory"] = "; ".join(
                f"group{gi}: {theory(self.optimizer, g, self.l2)[1]}" for gi, g, _ in self.groups)
        self.send(metrics, step=self.steps)

    def merge(self, earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
        if not earlier:
            self._counts: dict[str, int] = {}
        merged = {**earlier, **now}
        for key, value in now.items():
            if "decay_factor" in key:
                n = self._counts[key] = self._counts.get(key, 0) + 1
                if n > 1:
                    merged[key] = (earlier[key] * (n - 1) + value) / n
        return merged

    def curvature(self, loss: Callable[[], torch.Tensor], params: Iterable[torch.Tensor] | None = None, *,
                  model: torch.nn.Module | None = None, iters: int = 10) -> dict[str, float]:
        """The top Hessian eigenvalue of ``loss()`` (no decay term), the sharpness and the stability bound, logged."""
        params = list(params) if params is not None else [p for g in self.optimizer.param_groups for p in g["params"]]
        with untouched(model) if model is not None else contextlib.nullcontext():
            beta = top_hessian_eigenvalue(loss, params, iters=iters, tol=1e-2)
        group = self.groups[0][1]
        lr, lam = float(group["lr"]), float(self.l2 or group.get("weight_decay", 0.0))
        bound = stability_bound(optimizer="sgd" if isinstance(self.optimizer, torch.optim.SGD) else "adam",
                                momentum=float(group.get("momentum", 0.0)), lr=lr, weight_decay=lam,
                                wd_mode="decoupled" if _is_decoupled(self.optimizer, group) else "coupled")
        p = self.prefix
        metrics = {f"{p}/hessian_top_eig": beta, f"{p}/lr_sharpness": lr * (beta + lam), f"{p}/stability_bound": bound}
        self.send(metrics, step=self.steps)
        return metrics

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class DecayProbeCallback(Callback):
    """The probe on the classifier; its curvature at the start, every ``hessian_every`` epochs and at the end."""

    def __init__(self, *, hessian_every: int = 4, hessian_iters: int = 10, every: int = 1) -> None:
        self.hessian_every, self.hessian_iters, self.every = hessian_every, hessian_iters, every
        self.probe: WeightDecayProbe | None = None

    def on_fit_start(self, trainer: Session) -> None:
        l2 = trainer.weight_decay if trainer.wd_mode == "l2" else 0.0
        self.probe = WeightDecayProbe(trainer.optimizer, l2=l2, params=trainer.decay_params, every=self.every,
                                      publish=lambda m: trainer.log(m, axis=STEP_AXIS))
        # A resumed fit counts on from its checkpoint, so "one step in every" picks the same steps.
        self.probe.steps = trainer.global_step
        if trainer.weight_decay:
            _, formula = theory(trainer.optimizer, self.probe.groups[0][1], l2)
            print(f"wd/decay_factor_theory: {formula}", file=sys.stderr)
        if self.hessian_every and trainer.global_step == 0:  # the start of training, not of a resumed fit
            self._curvature(trainer)

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        done = epoch + 1
        if self.hessian_every and (done % self.hessian_every == 0 or done == trainer.epochs or trainer.should_stop):
            self._curvature(trainer)

    def on_fit_end(self, trainer: Session) -> None:
        self.probe.remove()

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        if self.probe is not None:
            self.probe.remove()

    def _curvature(self, trainer: Session) -> None:
        loss, params = trainer.curvature_loss()
        metrics = self.probe.curvature(loss, params, iters=self.hessian_iters)
        trainer.summary.update(metrics)
        sharpness, bound = metrics["wd/lr_sharpness"], metrics["wd/stability_bound"]
        verdict = "above the bound: this lr is too large for the surface" if sharpness >= bound else "stable"
        if trainer.optimizer_name != "sgd":
            verdict += f"; the bound is SGD's, {trainer.optimizer_name} rescales the step"
        print(f"curvature at step {trainer.global_step}: beta = {metrics['wd/hessian_top_eig']:.4g}, "
              f"lr*(beta+lambda) = {sharpness:.4g} vs {bound:g} ({verdict})", file=sys.stderr)
