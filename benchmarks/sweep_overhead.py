"""What the offline sweep runner costs, and what running trials in parallel buys.

1. ``overhead_per_trial_s``: a grid of no-op trials run by the runner, minus the same commands
   run back to back with ``subprocess.run``, per trial: the engine's proposal, the state file
   written after every change, process start-up and polling. Goal: <= 1.5 s.
2. ``jobs2_over_jobs1``: wall time of a grid of equal CPU-bound trials (torch matrix products,
   as a small training step would do) with ``--jobs 2`` over ``--jobs 1``. With ``--jobs K`` the
   runner gives each trial ``cpus // K`` threads, so the work is not oversubscribed.

    python benchmarks/sweep_overhead.py [--noop-trials 8] [--cpu-trials 6] [--work 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlhw.tracking.sweep import Runner, Sweep  # noqa: E402

CPU_TRIAL = """\
import argparse
import torch

p = argparse.ArgumentParser()
p.add_argument("--i", type=int)
p.add_argument("--work", type=int)
args = p.parse_args()
a = torch.randn(384, 384, generator=torch.Generator().manual_seed(args.i))
for _ in range(args.work * 25):
    a = torch.tanh(a @ a)
"""


def run_grid(program: Path, values: list[int], out: Path, jobs: int, extra: dict | None = None) -> float:
    """Wall seconds the runner takes for a grid over ``--i`` (no live table, no W&B in the trials)."""
    params = {"i": {"values": values}, **{k: {"value": v} for k, v in (extra or {}).items()}}
    sweep = Sweep.create({"program": str(program), "method": "grid", "parameters": params}, out=out,
                         source=str(program), count=None)
    started = time.perf_counter()
    Runner(sweep, jobs=jobs).run()
    elapsed = time.perf_counter() - started
    assert all(t.state == "finished" for t in sweep.trials), [t.log.read_text() for t in sweep.trials]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noop-trials", type=int, default=8)
    parser.add_argument("--cpu-trials", type=int, default=6)
    parser.add_argument("--work", type=int, default=10, help="size of each CPU-bound trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        noop = tmp / "noop.py"
        noop.write_text("")
        cpu = tmp / "cpu.py"
        cpu.write_text(CPU_TRIAL)
        values = list(range(args.noop_trials))
        # The engine's first proposal imports SciPy (about a second, once per sweep, paid while
        # `launch.py sweep` validates the YAML); measured on its own, outside the per-trial figure.
        started = time.perf_counter()
        run_grid(noop, [0], tmp / "warm", jobs=1)
        first_sweep = time.perf_counter() - started
        started = time.perf_counter()
        for i in values:
            subprocess.run([sys.executable, str(noop), f"--i={i}"], check=True)
        direct = time.perf_counter() - started
        runner = run_grid(noop, values, tmp / "noop", jobs=1)

        cpu_values = list(range(args.cpu_trials))
        jobs1 = run_grid(cpu, cpu_values, tmp / "cpu1", jobs=1, extra={"work": args.work})
        jobs2 = run_grid(cpu, cpu_values, tmp / "cpu2", jobs=2, extra={"work": args.work})
        # The same sweep with every trial pinned to one thread (a user's OMP_NUM_THREADS wins over
        # the runner's share): separates what parallel trials buy from how well torch uses 2 threads.
        os.environ["OMP_NUM_THREADS"] = "1"
        jobs1_one_thread = run_grid(cpu, cpu_values, tmp / "cpu1t", jobs=1, extra={"work": args.work})
        jobs2_one_thread = run_grid(cpu, cpu_values, tmp / "cpu2t", jobs=2, extra={"work": args.work})
    print(json.dumps({
        "cpus": len(os.sched_getaffinity(0)),
        "first_sweep_startup_s": round(first_sweep, 2),
        "noop_trials": args.noop_trials,
        "noop_direct_s": round(direct, 2),
        "noop_runner_s": round(runner, 2),
        "overhead_per_trial_s": round((runner - direct) / args.noop_trials, 3),
        "overhead_goal_s": 1.5,
        "cpu_trials": args.cpu_trials,
        "cpu_jobs1_s": round(jobs1, 2),
        "cpu_jobs2_s": round(jobs2, 2),
        "jobs2_over_jobs1": round(jobs2 / jobs1, 3),
        "one_thread_jobs1_s": round(jobs1_one_thread, 2),
        "one_thread_jobs2_s": round(jobs2_one_thread, 2),
        "one_thread_jobs2_over_jobs1": round(jobs2_one_thread / jobs1_one_thread, 3),
    }))


if __name__ == "__main__":
    main()
