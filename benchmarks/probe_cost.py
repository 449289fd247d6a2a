"""What the weight-decay probe costs a training step.

The same training steps (a small CNN on fixed random data, CPU, batch 64 of 28x28) run with and
without a probe on the optimizer, alternating, in one process; the probe publishes to a list so
W&B's own cost is not counted. Only ``optimizer.step()`` is timed (the probe's hooks run inside
it; the forward and backward it leaves alone would only add noise). Reported per optimizer: ms
per step with and without the probe, the added ms, and the median pair ratio; ``params`` is the
model's size (the probe's cost grows with it: one more optimizer step and state).

    python benchmarks/probe_cost.py [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlhw.callbacks.weight_decay import WeightDecayProbe  # noqa: E402
from pairing import alternate, ratio_summary  # noqa: E402

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
}


def timed(make, steps: int, probe: bool) -> float:
    """Seconds per training step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 10))
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    opt = make(model.parameters())
    if probe:
        WeightDecayProbe(opt, publish=lambda m: None)
    spent = 0.0
    for i in range(steps + 3):  # three warm-up steps
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        t0 = time.perf_counter()
        opt.step()
        spent += (time.perf_counter() - t0) * (i >= 3)
    return spent / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"threads": 1, "steps": args.steps, "repeats": args.repeats, "params": 16 * 9 + 16 + 32 * 16 * 9 + 32 + 32 * 49 * 10 + 10}
    for name, make in OPTIMIZERS.items():
        with_probe, without = alternate(lambda: timed(make, args.steps, True), lambda: timed(make, args.steps, False), args.repeats)
        a, b = sorted(with_probe)[len(with_probe) // 2], sorted(without)[len(without) // 2]
        out[name] = {"step_ms": round(b * 1e3, 3), "step_ms_probed": round(a * 1e3, 3),
                     "probe_ms_per_step": round((a - b) * 1e3, 3), **ratio_summary(with_probe, without)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
