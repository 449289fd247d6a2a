"""The IoU experiment: IoU from its set definition, its gradient along a sliding box, 1 - IoU and GIoU descents.
Boxes are ``(x1, y1, x2, y2)``; a zero-area box has IoU 0 with every box, itself included (torchvision: NaN)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert, distance_box_iou, generalized_box_iou, generalized_box_iou_loss
from torchvision.ops import box_iou as tv_box_iou

from dlhw.core.errors import UsageError
from dlhw.core.events import Callback, Session
from dlhw.trainers.settings import make, setting, settings, values

DEFAULT_BOX_A = (0.0, 0.0, 4.0, 4.0)
DEFAULT_BOX_B = (-4.0, 1.0, -2.0, 3.0)


def check_boxes(boxes: Tensor, name: str = "boxes") -> Tensor:
    """``boxes`` as a floating (N, 4) tensor (integers would overflow in areas); ValueError names a bad box."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        boxes = boxes.float()
    with torch.no_grad():
        for bad, why in ((~torch.isfinite(boxes).all(dim=1), "has a non-finite coordinate"),
                         ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
                          "has x2 < x1 or y2 < y1; give the top-left corner (x1, y1) first")):
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"{name}[{i}] = {boxes[i].tolist()} {why}")
    return boxes


def _area(boxes: Tensor) -> Tensor:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if not torch.isfinite(area).all():
        i = int((~torch.isfinite(area)).nonzero()[0])
        raise ValueError(f"the area of box {boxes[i].tolist()} overflows {boxes.dtype}; rescale the coordinates")
    return area


def _overlap(lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
    # N x M lengths of [lo1, hi1] ∩ [lo2, hi2], in place: backward needs neither overwritten input.
    return torch.minimum(hi1[:, None], hi2).sub_(torch.maximum(lo1[:, None], lo2)).clamp_(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise (N, M) IoU of (N, 4) and (M, 4) boxes, differentiable; ValueError on a non-finite or inverted box."""
    boxes1, boxes2 = check_boxes(boxes1, "boxes1"), check_boxes(boxes2, "boxes2")
    area1, area2 = _area(boxes1), _area(boxes2)
    w = _overlap(boxes1[:, 0], boxes1[:, 2], boxes2[:, 0], boxes2[:, 2])
    h = _overlap(boxes1[:, 1], boxes1[:, 3], boxes2[:, 1], boxes2[:, 3])
    inter = w * h
    union = (area1[:, None] + area2).sub_(inter)
    # union is 0 only for two zero-area boxes: replaced before dividing, as a NaN filled in later reaches the gradient.
    zero1, zero2 = area1 == 0, area2 == 0
    if zero1.any() and zero2.any():
        union = union.masked_fill(zero1[:, None] & zero2, 1.0)
    return inter / union


# Measures of overlap on the slide: ours, and torchvision's two that keep a gradient apart.
MEASURES = {"iou": box_iou, "giou": generalized_box_iou, "diou": distance_box_iou}


@dataclass
class Kink:
    """A position where an x-edge of B meets an x-edge of A and dIoU/dx jumps."""

    x: float
    edges: str
    iou: float
    left: float  # one-sided finite difference from the left
    right: float  # ... and from the right
    autograd: float  # a subgradient convention of the torch release, not a derivative: no check reads it


@dataclass
class Slide:
    """B's left edge ``x``; at each, every measure's value and autograd d/dx, and IoU's one-sided differences."""

    box_a: tuple[float, ...]
    box_b: tuple[float, ...]
    x: Tensor
    values: dict[str, Tensor]
    grads: dict[str, Tensor]
    fd_left: Tensor
    fd_right: Tensor
    kinks: list[Kink]

    def smooth(self) -> Tensor:
        """Positions that are not kinks, where the derivative exists and autograd's value is it."""
        return ~torch.isin(self.x, torch.tensor([k.x for k in self.kinks], dtype=self.x.dtype))

    def zero_grad_fraction(self, measure: str) -> float:
        return float((self.grads[measure][self.smooth()] == 0).double().mean())

    def disjoint(self) -> Tensor:
        """Positions where the boxes are strictly apart: IoU 0 and not touching."""
        return (self.values["iou"] == 0) & self.smooth()

    def gradients_as_expected(self) -> bool:
        """Where the boxes are apart IoU's d/dx is 0, GIoU's and DIoU's are not; kinks' one-sided derivatives differ."""
        apart, g = self.disjoint(), self.grads
        return (bool((g["iou"][apart] == 0).all() and (g["giou"][apart] != 0).all() and (g["diou"][apart] != 0).all())
                and all(abs(k.right - k.left) > 1e-3 for k in self.kinks))


def _slid(box_b: Tensor, x: Tensor) -> Tensor:
    width = box_b[2] - box_b[0]
    return torch.stack([x, box_b[1].expand_as(x), x + width, box_b[3].expand_as(x)], dim=1)


def kink_positions(box_a: Sequence[float], box_b: Sequence[float]) -> list[tuple[float, str]]:
    """The left-edge positions of B where one of its x-edges meets one of A's, with a label."""
    width = box_b[2] - box_b[0]
    found: dict[float, list[str]] = {}
    for a_edge, a_name in ((box_a[0], "A.x1"), (box_a[2], "A.x2")):
        for offset, b_name in ((0.0, "B.x1"), (width, "B.x2")):
            found.setdefault(a_edge - offset, []).append(f"{b_name} = {a_name}")
    return [(x, ", ".join(names)) for x, names in sorted(found.items())]


def slide(box_a: Sequence[float], box_b: Sequence[float], *, to: float, points: int, fd_step: float = 1e-7) -> Slide:
    """Slide B (left edge from ``box_b[0]`` to ``to``) across A along x, in float64, on a grid holding every kink."""
    a = check_boxes(torch.tensor([box_a], dtype=torch.float64), "box A")[0]
    b = check_boxes(torch.tensor([box_b], dtype=torch.float64), "box B")[0]
    start = float(b[0])
    if not to > start:
        raise ValueError(f"the slide must move B to the right: end {to} <= start {start}")
    kinks_at = [(k, e) for k, e in kink_positions(box_a, box_b) if start < k < to]
    grid = torch.linspace(start, to, points, dtype=torch.float64)
    at = torch.tensor([k for k, _ in kinks_at], dtype=torch.float64)
    # A grid point a rounding error away from a kink would sit on its wrong side: replace it.
    near = (grid[:, None] - at).abs().le(1e-9 * (to - start)).any(dim=1)
    x = torch.cat([grid[~near], at]).sort().values
    values, grads = {}, {}
    for m, measure in MEASURES.items():
        moved = x.clone().requires_grad_(True)
        out = measure(a[None], _slid(b, moved))[0]
        # Each value depends on its own x only, so the gradient of the sum is the per-position derivative.
        values[m], (grads[m],) = out.detach(), torch.autograd.grad(out.sum(), moved)
    fd_left = (values["iou"] - box_iou(a[None], _slid(b, x - fd_step))[0]) / fd_step
    fd_right = (box_iou(a[None], _slid(b, x + fd_step))[0] - values["iou"]) / fd_step
    kinks = []
    for k, edges in kinks_at:
        i = int((x == k).nonzero()[0])
        kinks.append(Kink(x=k, edges=edges, iou=float(values["iou"][i]), left=float(fd_left[i]),
                          right=float(fd_right[i]), autograd=float(grads["iou"][i])))
    return Slide(tuple(map(float, box_a)), tuple(map(float, box_b)), x, values, grads, fd_left, fd_right, kinks)


# Per-box losses of predicted boxes (N, 4) against one target (4,).
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "iou_loss": lambda pred, target: 1 - box_iou(pred, target[None])[:, 0],
    "giou_loss": lambda pred, target: generalized_box_iou_loss(pred, target.expand_as(pred), reduction="none"),
}


def disjoint_starts(target: Sequence[float], n: int, generator: torch.Generator) -> Tensor:
    """``n`` random boxes (cx, cy, w, h) that do not touch ``target``: sizes 0.5-1.5x the target's,
    centres in a random direction at 1.2-3x the distance where the boxes would first touch."""
    tx1, ty1, tx2, ty2 = target
    tw, th = tx2 - tx1, ty2 - ty1
    size = torch.tensor([tw, th], dtype=torch.float64) * (0.5 + torch.rand(n, 2, generator=generator, dtype=torch.float64))
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
    cos, sin = angle.cos().abs().clamp(min=1e-12), angle.sin().abs().clamp(min=1e-12)
    # Moving the centre along the direction, the boxes separate once either gap opens.
    touch = torch.minimum((tw + size[:, 0]) / 2 / cos, (th + size[:, 1]) / 2 / sin)
    dist = touch * (1.2 + 1.8 * torch.rand(n, generator=generator, dtype=torch.float64))
    centre = torch.tensor([(tx1 + tx2) / 2, (ty1 + ty2) / 2], dtype=torch.float64)
    centre = centre + dist[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return torch.cat([centre, size], dim=1).float()


corners = partial(box_convert, in_fmt="cxcywh", out_fmt="xyxy")


class Descent:
    """Adam on a batch of boxes, parametrised as centre and size, under one loss."""

    def __init__(self, loss: str, starts: Tensor, target: Tensor, lr: float) -> None:
        self.loss_fn, self.target = LOSSES[loss], target
        self.params = starts.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.params], lr=lr)

    def boxes(self) -> Tensor:
        return corners(self.params.detach())

    def iou(self) -> Tensor:
        return box_iou(self.boxes(), self.target[None])[:, 0]

    def step(self) -> dict[str, float]:
        """One update: the loss and gradient norm before it, the mean IoU after it."""
        losses = self.loss_fn(corners(self.params), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        grad_norm = float(self.params.grad.norm())
        self.optimizer.step()
        with torch.no_grad():
            self.params[:, 2:].clamp_(min=1e-3)  # projected step: a box keeps a positive width and height
        return {"loss": float(losses.detach().mean()), "grad_norm": grad_norm, "iou": float(self.iou().mean())}


_BOX = ("X1", "Y1", "X2", "Y2")


@settings
class IoUSetup:
    box_a: tuple[float, float, float, float] = setting(
        DEFAULT_BOX_A, f"the fixed box, also the descent's target (default {' '.join(map(str, DEFAULT_BOX_A))})",
        metavar=_BOX)
    box_b: tuple[float, float, float, float] = setting(
        DEFAULT_BOX_B, f"the sliding box at its start (default {' '.join(map(str, DEFAULT_BOX_B))})", metavar=_BOX)
    slide_to: float = setting(6.0, "left edge of B at the end of the slide (default 6.0)")
    slide_points: int = setting(401, "positions on the slide, kinks added (default 401)", min=2)
    epochs: int = setting(1, "descent epochs (default 1)", min=1)
    steps: int = setting(200, "descent steps per epoch (default 200)", min=1)
    lr: float = setting(0.1, "Adam learning rate of the descents (default 0.1)", above=0)
    batch_size: int = setting(16, "boxes descending at once from random disjoint starts (default 16)", min=1)
    agreement_boxes: int = setting(512, "random boxes per side in the check against torchvision's box_iou "
                                        "(default 512)", min=1)
    seed: int = setting(0, "random seed (the global --seed)", flag=False)


def setup_from_args(args: argparse.Namespace) -> IoUSetup:
    setup = make(IoUSetup, values(IoUSetup, args))
    a, b = setup.box_a, setup.box_b
    for flag, box in (("--box-a", a), ("--box-b", b)):
        try:
            check_boxes(torch.tensor([box], dtype=torch.float64), flag)
        except ValueError as exc:
            raise UsageError(str(exc).replace("[0] = ", " ")) from None
    if a[2] - a[0] <= 0 or a[3] - a[1] <= 0:
        raise UsageError(f"--box-a {list(a)} has zero area; the target needs a positive width and height")
    if b[2] - b[0] <= 0 or min(a[3], b[3]) - max(a[1], b[1]) <= 0:
        raise UsageError(f"--box-b {list(b)} never overlaps box A on the slide; give it a positive "
                         f"width and a y-range that overlaps A's ({a[1]} to {a[3]})")
    if not (math.isfinite(setup.slide_to) and setup.slide_to > b[0]):
        raise UsageError(f"--slide-to {setup.slide_to} must lie right of B's left edge {b[0]}")
    return setup


def torchvision_agreement(n: int, seed: int) -> float:
    """Largest |ours - torchvision.ops.box_iou| over n x n random float32 boxes of positive area."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 0.01 + torch.rand(n, 2, generator=g) * 30], dim=1)
    other = boxes.flip(0) + torch.randn(n, 4, generator=g).clamp(-1, 1)
    other[:, 2:] = torch.maximum(other[:, 2:], other[:, :2] + 0.01)
    return float((box_iou(boxes, other) - tv_box_iou(boxes, other)).abs().max())


def run_iou(setup: IoUSetup, callbacks: Iterable[Callback] = (), config: Mapping[str, Any] | None = None) -> Session:
    """Descents with 1 - IoU and GIoU loss, the slide and the agreement with torchvision, in ``session.results``."""
    session = Session(callbacks, name="iou", config=config, epochs=setup.epochs, steps_per_epoch=setup.steps)
    target = torch.tensor(setup.box_a)
    starts = disjoint_starts(setup.box_a, setup.batch_size, torch.Generator().manual_seed(setup.seed))
    descents = {name: Descent(name, starts, target, setup.lr) for name in LOSSES}
    curves: dict[str, list[float]] = {name: [] for name in LOSSES}
    session.results.update(descents=descents, starts=corners(starts), curves=curves)
    start_iou = float(descents["iou_loss"].iou().max())
    with session.running():
        for epoch in range(setup.epochs):
            session.epoch = epoch
            session.fire("on_epoch_start", epoch=epoch)
            for i in range(setup.steps):
                metrics = {}
                for name, descent in descents.items():
                    out = descent.step()
                    curves[name].append(out["iou"])
                    metrics.update({f"descent/{name}/{k}": v for k, v in out.items()})
                session.log(metrics)
                session.step_end(i, metrics)
            session.epoch_end(epoch, {f"eval/{name}/{k}": float(f(descent.iou())) for name, descent in descents.items()
                                      for k, f in (("mean_iou", torch.mean), ("min_iou", torch.min))})
            if session.should_stop:
                break
        s = session.results["slide"] = slide(setup.box_a, setup.box_b, to=setup.slide_to, points=setup.slide_points)
        diff = torchvision_agreement(setup.agreement_boxes, setup.seed)
        passed = diff <= 1e-6 and start_iou == 0.0 and s.gradients_as_expected()
        session.test_end({"check/max_abs_diff_vs_torchvision": diff, "slide/kinks": len(s.kinks),
                          **{f"slide/{m}_zero_grad_fraction": s.zero_grad_fraction(m) for m in MEASURES},
                          "check/passed": float(passed)})
    return session
