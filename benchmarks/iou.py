"""Pairwise IoU of 4096 x 4096 boxes: ``trainers.iou.box_iou`` against ``torchvision.ops.box_iou``.

Both run on the same random float32 boxes in one process, alternating, after a warm-up; the
goal is ``ratio`` (ours / torchvision, median over the alternating pairs) <= 1.1 on CPU. Ours
includes its input checks.

    python benchmarks/iou.py [--boxes 4096] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou as tv_box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairing import alternate, report  # noqa: E402
from dlhw.trainers.iou import box_iou  # noqa: E402


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` boxes with corners in [0, 100] and sides up to 30: about a third of pairs overlap."""
    xy = torch.rand(n, 2, generator=generator) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 30], dim=1)


def timed(fn, a: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(a, b)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(args.boxes, g), random_boxes(args.boxes, g)
    max_abs_diff = float((box_iou(a, b) - tv_box_iou(a, b)).abs().max())  # also the warm-up
    ours, theirs = alternate(lambda: timed(box_iou, a, b), lambda: timed(tv_box_iou, a, b), args.repeats)
    report("iou", ours, theirs, names=("ours_s", "torchvision_s"), goal=1.1, extra={"max_abs_diff": max_abs_diff},
           boxes=args.boxes, repeats=args.repeats, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
