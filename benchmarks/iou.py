"""Pairwise IoU of 4096 x 4096 boxes: ``trainers.iou.box_iou`` against ``torchvision.ops.box_iou``.

Both run on the same random float32 boxes in one process, alternating, after a warm-up; the
goal is ``ratio`` (ours / torchvision, median over the alternating pairs) <= 1.1 on CPU. Ours
includes its input checks.

    python benchmarks/iou.py [--boxes 4096] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou as tv_box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.iou import box_iou  # noqa: E402


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
    ours, theirs = [], []
    for r in range(args.repeats):
        # Swap who goes first each round, so neither always runs on a freshly freed allocator.
        pair = [(ours, box_iou), (theirs, tv_box_iou)]
        for times, fn in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(fn, a, b))
    # Each pair shares the machine's momentary load; the median of the pair ratios is robust to
    # the noise of a shared CPU, the minima are the cleanest single times.
    ratios = sorted(o / t for o, t in zip(ours, theirs))
    result = {
        "benchmark": "iou",
        "boxes": args.boxes,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "ours_s": round(min(ours), 4),
        "torchvision_s": round(min(theirs), 4),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_range": [round(ratios[0], 4), round(ratios[-1], 4)],
        "goal_ratio": 1.1,
        "max_abs_diff": max_abs_diff,
    }
    result["meets_goal"] = result["ratio"] <= result["goal_ratio"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
