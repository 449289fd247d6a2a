"""One process against two on the digits AlexNet, through the real command, same global batch.

Both configurations run ``torchrun --standalone --nproc_per_node N launch.py alexnet`` (N = 1, 2),
so start-up costs match, and alternate in pairs so that load from other work on a shared machine
hits both. Each process gets cpus / N threads and ``--batch-size`` global / N, so a step of either
sees the same number of images. Everything else is the digits recipe (augmentation and dropout on,
so the two do not take identical steps), without the curvature probe and pictures; W&B offline.

Seconds per epoch are read back from the run (``wandb leet inspect``): the time between two
consecutive epochs' ends (training and evaluation), the first epoch left out (no start mark, and
it pays one-off costs), so ``--epochs`` must be at least 2.

    python benchmarks/distributed_alexnet.py [--pairs 2] [--epochs 3] [--global-batch 32]

Prints JSON: per N, the median seconds per epoch and each run's final val and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlhw.tracking.readback import history, run_summary  # noqa: E402


def run(n: int, epochs: int, global_batch: int, out: Path) -> dict:
    """One ``torchrun`` job of ``n`` processes; its epoch times and final metrics."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cpus // n)
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(ROOT / "launch.py"), "alexnet", "--device", "cpu", "--device-data", "on", "--epochs", str(epochs),
           "--batch-size", str(global_batch // n), "--hessian-every", "0", "--viz-images", "0", "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{n} process(es) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    wall = time.perf_counter() - started
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    ends = [r["_timestamp"] for r in history(run_dir) if "train/epoch_loss" in r]
    summary = run_summary(run_dir)["summary"]
    return {"epoch_s": [round(b - a, 2) for a, b in zip(ends, ends[1:])], "val_acc": round(summary["best/val/acc"], 4),
            "test_acc": round(summary["test/acc"], 4), "wall_s": round(wall, 1), "threads_per_process": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=32)
    args = p.parse_args()
    if args.epochs < 2 or args.global_batch % 2:
        p.error("--epochs must be at least 2 and --global-batch even")
    load_before = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for n in runs:
                runs[n].append(run(n, args.epochs, args.global_batch, Path(tmp) / f"{pair}-{n}"))
    result = {"benchmark": "distributed_alexnet", "global_batch": args.global_batch, "epochs": args.epochs,
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    for n, rs in runs.items():
        result[f"processes_{n}"] = {
            "median_epoch_s": round(statistics.median(s for r in rs for s in r["epoch_s"]), 2),
            "val_acc": [r["val_acc"] for r in rs], "test_acc": [r["test_acc"] for r in rs],
            "wall_s": [r["wall_s"] for r in rs], "threads_per_process": rs[0]["threads_per_process"]}
    result["epoch_time_2_over_1"] = round(result["processes_2"]["median_epoch_s"] / result["processes_1"]["median_epoch_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
