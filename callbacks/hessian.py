"""The sharpest curvature of a loss: the top Hessian eigenvalue by power iteration on
Hessian-vector products, without ever forming the Hessian.

Why it matters for the learning rate: near a minimum, gradient descent with step ``lr`` on a loss
whose Hessian has top eigenvalue ``beta``, plus weight decay ``lambda`` (which adds ``lambda * I``),
multiplies the error along the sharpest direction by ``1 - lr * (beta + lambda)`` per step. The
step is stable only while that stays in (-1, 1), i.e. ``lr * (beta + lambda) < 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _power_iteration(
    grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], *, shift: float, iters: int, tol: float, seed: int
) -> tuple[float, int]:
    """Dominant eigenvalue of H - shift * I (largest magnitude), and the iterations it took."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    norm = _dot(v, v).sqrt()
    v = [x / norm for x in v]
    eig = 0.0
    for i in range(1, iters + 1):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        hv = [h - shift * x for h, x in zip(hv, v)]
        new = float(_dot(hv, v))  # Rayleigh quotient v^T (H - shift I) v with |v| = 1
        norm = _dot(hv, hv).sqrt()
        if norm == 0:
            return 0.0, i
        v = [x.detach() / norm for x in hv]
        if i > 1 and abs(new - eig) <= tol * max(abs(new), 1e-12):
            return new, i
        eig = new
    return eig, iters


def top_hessian_eigenvalue(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> tuple[float, int]:
    """The largest eigenvalue of d2 loss / d params2 and the Hessian-vector products it took.

    ``loss_fn`` recomputes the loss (on a fixed batch, in eval mode so dropout does not move
    the surface). The gradient graph is built once and every Hessian-vector product reuses it.
    Power iteration finds the eigenvalue of largest magnitude; when that one is negative (a
    saddle), a second pass on ``H - mu * I`` finds the largest one. Each pass stops when the
    Rayleigh quotient changes by less than ``tol`` (relative) or after ``iters`` steps.
    """
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    mu, used = _power_iteration(grads, params, shift=0.0, iters=iters, tol=tol, seed=seed)
    if mu >= 0:
        return mu, used
    nu, more = _power_iteration(grads, params, shift=mu, iters=iters, tol=tol, seed=seed + 1)
    return nu + mu, used + more
