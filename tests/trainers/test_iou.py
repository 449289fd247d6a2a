"""IoU from its set definition: agreement with torchvision, input checks, the degenerate-box rule,
its properties (hypothesis), the slide's zero gradients and kinks, and the two descents."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou as tv_box_iou

from dlhw.core.errors import UsageError
from dlhw.trainers.iou import (
    DEFAULT_BOX_A,
    DEFAULT_BOX_B,
    Descent,
    IoUSetup,
    box_iou,
    corners,
    disjoint_starts,
    kink_positions,
    run_iou,
    setup_from_args,
    slide,
    torchvision_agreement,
)


def _random_boxes(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 50
    return torch.cat([xy, xy + 0.1 + torch.rand(n, 2, generator=g, dtype=dtype) * 20], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_agrees_with_torchvision(dtype):
    a, b = _random_boxes(200, 0, dtype), _random_boxes(130, 1, dtype)
    ours = box_iou(a, b)
    assert ours.shape == (200, 130) and ours.dtype == dtype
    assert (ours - tv_box_iou(a, b)).abs().max() <= 1e-6
    assert (ours > 0).float().mean() > 0.1  # the random boxes do overlap, so the check means something
    assert torchvision_agreement(256, seed=3) <= 1e-6


def test_empty_sets_and_integer_boxes():
    assert box_iou(torch.zeros(0, 4), _random_boxes(3, 0)).shape == (0, 3)
    ints = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])
    assert box_iou(ints, ints)[0, 1] == pytest.approx(1 / 7)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.0, 0.0, float("nan"), 1.0]], r"boxes1\[0\] = .* has a non-finite coordinate"),
        ([[0.0, float("inf"), 1.0, 1.0]], "non-finite"),
        ([[2.0, 0.0, 1.0, 1.0]], "has x2 < x1 or y2 < y1"),
        ([[0.0, 3.0, 1.0, 1.0]], "has x2 < x1 or y2 < y1"),
        ([[0.0, 0.0, 1.0]], r"must have shape \(N, 4\)"),
        ([[0.0, 0.0, 3e38, 3e38]], "overflows"),
    ],
)
def test_bad_boxes_are_a_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        box_iou(torch.tensor(bad), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_second_argument_is_named_with_its_index():
    ok = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"boxes2\[1\]"):
        box_iou(ok, torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))


def test_zero_area_boxes_have_iou_zero_even_with_themselves():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    segment = torch.tensor([[0.0, 1.0, 2.0, 1.0]])  # lies inside the square below
    square = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    boxes = torch.cat([point, segment, square])
    iou = box_iou(boxes, boxes)
    assert torch.equal(iou, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    # torchvision computes 0 / 0 where both boxes have zero area; everywhere else it agrees.
    theirs = tv_box_iou(boxes, boxes)
    assert theirs[:2, :2].isnan().all() and torch.equal(theirs[2], iou[2])


def test_gradient_is_finite_at_zero_area_boxes():
    # Point, segment and square against each other, the 0/0 pairs included: every derivative is a
    # number, and the pairs with a positive union get exactly torchvision's gradient.
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(box_iou(boxes, boxes).sum(), boxes)
    assert torch.isfinite(grad).all()
    flat, square = boxes[:2].detach(), boxes[2:].detach()
    ours = square.clone().requires_grad_(True)
    theirs = square.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(box_iou(ours, flat).sum() + box_iou(ours, ours).sum(), ours)
    (g_theirs,) = torch.autograd.grad(tv_box_iou(theirs, flat).sum() + tv_box_iou(theirs, theirs).sum(), theirs)
    assert torch.isfinite(g_ours).all() and torch.allclose(g_ours, g_theirs)


# -- properties -------------------------------------------------------------------------------

# Coordinates on a 1/8 grid are exact in float64, so "zero overlap" is decided without rounding.
coord = st.integers(-400, 400).map(lambda v: v / 8)
side = st.integers(0, 200).map(lambda v: v / 8)


@st.composite
def box(draw, positive: bool = False):
    x1, y1 = draw(coord), draw(coord)
    s = side.filter(lambda v: v > 0) if positive else side
    return [x1, y1, x1 + draw(s), y1 + draw(s)]


boxes = st.lists(box(), min_size=1, max_size=6)
real = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@given(a=boxes, b=boxes)
@settings(max_examples=150, deadline=None)
def test_iou_lies_in_0_1_and_is_symmetric(a, b):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    iou = box_iou(ta, tb)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert torch.equal(iou, box_iou(tb, ta).T)


@given(x1=real, y1=real, w=st.floats(1e-3, 1e3), h=st.floats(1e-3, 1e3))
@settings(max_examples=150, deadline=None)
def test_a_box_of_positive_area_has_iou_one_with_itself(x1, y1, w, h):
    a = torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float64)
    assert box_iou(a, a).item() == 1.0


@given(a=box(positive=True), b=box(positive=True), shift=st.tuples(real, real),
       scale=st.floats(1e-3, 1e3))
@settings(max_examples=150, deadline=None)
def test_invariant_under_translating_and_scaling_both_boxes(a, b, shift, scale):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    move = torch.tensor([*shift, *shift], dtype=torch.float64)
    before = box_iou(ta, tb).item()
    assert box_iou(ta + move, tb + move).item() == pytest.approx(before, abs=1e-9)
    assert box_iou(ta * scale, tb * scale).item() == pytest.approx(before, abs=1e-9)


@given(a=box(), b=box())
@settings(max_examples=300, deadline=None)
def test_iou_is_zero_exactly_when_the_overlap_has_zero_area(a, b):
    overlap_w = min(a[2], b[2]) - max(a[0], b[0])
    overlap_h = min(a[3], b[3]) - max(a[1], b[1])
    overlaps = overlap_w > 0 and overlap_h > 0
    iou = box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)).item()
    assert (iou == 0) == (not overlaps)


# -- the slide --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_slide():
    return slide(DEFAULT_BOX_A, DEFAULT_BOX_B, to=6.0, points=201)


def test_kinks_sit_where_edges_meet_with_the_analytic_one_sided_derivatives(default_slide):
    # A = [0, 4] x [0, 4], B is 2 x 2 at y in [1, 3]: overlap u = x + 2 for x in [-2, 0] gives
    # IoU = 2u / (20 - 2u), whose slope is 0.1 at u = 0 and 40 / 256 at u = 2.
    kinks = default_slide.kinks
    assert [(k.x, k.edges) for k in kinks] == [
        (-2.0, "B.x2 = A.x1"), (0.0, "B.x1 = A.x1"), (2.0, "B.x2 = A.x2"), (4.0, "B.x1 = A.x2")]
    expected = [(0.0, 0.1), (40 / 256, 0.0), (0.0, -40 / 256), (-0.1, 0.0)]
    for k, (left, right) in zip(kinks, expected):
        assert k.left == pytest.approx(left, abs=1e-5) and k.right == pytest.approx(right, abs=1e-5)
    assert [k.iou for k in kinks] == pytest.approx([0.0, 0.25, 0.25, 0.0])
    # Exactly at a kink autograd reports a convention that differs between torch releases; it is
    # always a subgradient, between the two one-sided derivatives.
    for k in kinks:
        assert min(k.left, k.right) - 1e-5 <= k.autograd <= max(k.left, k.right) + 1e-5


@pytest.mark.parametrize("convention", ["left", "right", "mean", "zero"])
def test_gradient_checks_hold_whatever_autograd_returns_at_a_kink(default_slide, convention):
    # Torch releases differ in what d/dx autograd reports at a tie (clamp at 0, minimum/maximum at
    # equal edges): put each convention's value at every kink and the verdict must not change.
    s = default_slide
    grad = s.grads["iou"].clone()
    for k in s.kinks:
        i = int((s.x == k.x).nonzero()[0])
        grad[i] = {"left": k.left, "right": k.right, "mean": (k.left + k.right) / 2, "zero": 0.0}[convention]
    assert dataclasses.replace(s, grads={**s.grads, "iou": grad}).gradients_as_expected()


def test_gradient_checks_fail_on_a_gradient_while_apart(default_slide):
    s = default_slide
    grad = s.grads["iou"].clone()
    grad[int(s.disjoint().nonzero()[0])] = 0.1
    assert not dataclasses.replace(s, grads={**s.grads, "iou": grad}).gradients_as_expected()


def test_gradient_is_zero_while_apart_and_giou_diou_are_not(default_slide):
    s = default_slide
    apart = s.disjoint()
    assert apart.sum() > 50
    assert (s.grads["iou"][apart] == 0).all()
    assert (s.grads["giou"][apart] != 0).all() and (s.grads["diou"][apart] != 0).all()
    # Inside A (0 < x < 2) IoU is flat too, and so is GIoU (the enclosing box is A); DIoU still
    # pulls B's centre toward A's.
    inside = (s.x > 0) & (s.x < 2)
    assert (s.grads["iou"][inside] == 0).all() and (s.grads["giou"][inside] == 0).all()
    assert (s.grads["diou"][inside & ((s.x - 1).abs() > 1e-6)] != 0).all()
    assert s.zero_grad_fraction("iou") > s.zero_grad_fraction("giou") > s.zero_grad_fraction("diou")


def test_finite_differences_match_autograd_away_from_kinks(default_slide):
    s = default_slide
    near = torch.zeros_like(s.x, dtype=torch.bool)
    for k in s.kinks:
        near |= (s.x - k.x).abs() < 1e-3
    assert torch.allclose(s.fd_left[~near], s.grads["iou"][~near], atol=1e-5)
    assert torch.allclose(s.fd_right[~near], s.grads["iou"][~near], atol=1e-5)


def test_kink_positions_merge_edges_that_meet_at_once():
    # B as wide as A: B.x1 meets A.x1 at the same moment as B.x2 meets A.x2.
    assert kink_positions((0, 0, 2, 2), (-5, 0, -3, 2)) == [
        (-2, "B.x2 = A.x1"), (0, "B.x1 = A.x1, B.x2 = A.x2"), (2, "B.x1 = A.x2")]


def test_slide_rejects_a_bad_range():
    with pytest.raises(ValueError, match="must move B to the right"):
        slide(DEFAULT_BOX_A, DEFAULT_BOX_B, to=-5.0, points=10)


# -- descents ---------------------------------------------------------------------------------

def test_starts_are_disjoint_from_the_target():
    starts = corners(disjoint_starts(DEFAULT_BOX_A, 64, torch.Generator().manual_seed(0)))
    assert (box_iou(starts, torch.tensor([DEFAULT_BOX_A]))[:, 0] == 0).all()
    gap_x = torch.maximum(starts[:, 0] - 4, -starts[:, 2])
    gap_y = torch.maximum(starts[:, 1] - 4, -starts[:, 3])
    assert (torch.maximum(gap_x, gap_y) > 0).all()  # apart, not even touching


def test_iou_loss_is_stuck_and_giou_loss_converges():
    target = torch.tensor(DEFAULT_BOX_A)
    starts = disjoint_starts(DEFAULT_BOX_A, 4, torch.Generator().manual_seed(1))
    stuck, moving = Descent("iou_loss", starts, target, 0.1), Descent("giou_loss", starts, target, 0.1)
    for _ in range(150):
        out = stuck.step()
        assert out["grad_norm"] == 0.0 and out["loss"] == 1.0
        moving.step()
    assert torch.equal(stuck.params.detach(), starts)  # not one coordinate moved
    assert (moving.iou() > 0.5).all() and moving.iou().mean() > 0.8


def test_experiment_summary():
    summary = run_iou(IoUSetup(steps=20, batch_size=2, slide_points=51, agreement_boxes=64)).summary
    assert summary["check/passed"] == 1.0 and summary["slide/kinks"] == 4
    assert summary["eval/iou_loss/mean_iou"] == 0.0 and summary["eval/giou_loss/mean_iou"] > 0


def _args(**kw):
    base = dict(box_a=list(DEFAULT_BOX_A), box_b=list(DEFAULT_BOX_B), slide_to=6.0, slide_points=11,
                epochs=1, steps=5, lr=0.1, batch_size=2, seed=0)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(box_a=[4.0, 0.0, 0.0, 4.0]), "--box-a [4.0, 0.0, 0.0, 4.0] has x2 < x1 or y2 < y1"),
        (dict(box_b=[0.0, 0.0, 1.0, math.nan]), "--box-b [0.0, 0.0, 1.0, nan] has a non-finite coordinate"),
        (dict(box_a=[0.0, 0.0, 0.0, 4.0]), "--box-a [0.0, 0.0, 0.0, 4.0] has zero area"),
        (dict(box_b=[-4.0, 5.0, -2.0, 6.0]), "--box-b [-4.0, 5.0, -2.0, 6.0] never overlaps box A"),
        (dict(slide_to=-9.0), "--slide-to -9.0 must lie right of B's left edge"),
        (dict(steps=0), "--steps must be at least 1"),
        (dict(lr=-1.0), "--lr must be positive"),
    ],
)
def test_bad_flags_are_usage_errors(kw, message):
    with pytest.raises(UsageError) as info:
        setup_from_args(_args(**kw))
    assert message in str(info.value)
