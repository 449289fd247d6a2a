"""One process against two (torchrun, DDP over gloo) on the digits AlexNet, same global batch.

Both configurations start the same way, ``torchrun --standalone --nproc_per_node N`` (N = 1, 2), so
start-up costs match; they alternate in pairs so that load from other work on a shared machine
hits both. Each process gets cpus / N threads and ``--batch-size`` global / N, so the two see the
same images per step. The two-process child builds ``launch.py alexnet``'s trainer with the
distributed pieces put in from outside (its training batches sharded, its forward through DDP;
evaluation stays whole on every rank), without W&B.

    python benchmarks/distributed_alexnet.py [--pairs 2] [--epochs 5] [--global-batch 32]

Prints JSON: per N, the median seconds per epoch and the final val/test accuracy of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(argv: list[str]) -> None:
    """One rank of a job: train, then rank 0 prints its epoch times and final metrics as JSON."""
    from core.distributed import init_distributed, wrap_ddp
    from core.events import Callback
    from launch import get_args_parser, seed_everything
    from trainers.classification import build_trainer, resolve_args

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_start(self, trainer, epoch):
            self.started = time.perf_counter()

        def on_epoch_end(self, trainer, epoch, metrics):
            self.seconds.append(time.perf_counter() - self.started)

    dist = init_distributed("cpu")
    args = get_args_parser().parse_args(["alexnet", "--device", "cpu", "--device-data", "on", *argv])
    seed_everything(args.seed)
    settings, _ = resolve_args(args)
    timer = EpochTimer()
    trainer = build_trainer(settings, [timer])
    trainer.loaders.train.rank, trainer.loaders.train.world = dist.rank, dist.world_size
    trainer.forward = wrap_ddp(trainer.model, dist)
    summary = trainer.fit()
    if dist.is_main:
        print(json.dumps({"epoch_s": [round(s, 2) for s in timer.seconds], "val_acc": round(summary["val/acc"], 4),
                          "test_acc": round(summary["test/acc"], 4), "steps_per_epoch": len(trainer.loaders.train)}))
    dist.shutdown()


def run(n: int, epochs: int, global_batch: int) -> dict:
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__,
           "--child", "--epochs", str(epochs), "--batch-size", str(global_batch // n)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{n} process(es) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": round(time.perf_counter() - started, 1), "threads_per_process": threads}


def main() -> None:
    if "--child" in sys.argv:
        child([a for a in sys.argv[1:] if a != "--child"])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--global-batch", type=int, default=32)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.pairs):
        for n in runs:
            runs[n].append(run(n, args.epochs, args.global_batch))
    result = {"benchmark": "distributed_alexnet", "global_batch": args.global_batch, "epochs": args.epochs,
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    for n, rs in runs.items():
        result[f"processes_{n}"] = {
            "median_epoch_s": round(statistics.median(s for r in rs for s in r["epoch_s"]), 2),
            "val_acc": [r["val_acc"] for r in rs], "test_acc": [r["test_acc"] for r in rs],
            "steps_per_epoch": rs[0]["steps_per_epoch"], "wall_s": [r["wall_s"] for r in rs],
            "threads_per_process": rs[0]["threads_per_process"]}
    result["epoch_time_2_over_1"] = round(result["processes_2"]["median_epoch_s"] / result["processes_1"]["median_epoch_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
