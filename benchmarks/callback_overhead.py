"""What the full W&B callback set costs a training loop.

The same short training (a small CNN on fixed random data, CPU) runs with no callbacks and with
the W&B logger (offline), the progress bar, the summary table and checkpoints, alternating, in one
process, many short pairs. W&B's start and finish are a fixed cost per run (a service process,
files), reported on their own; the goal applies to the loop: ``loop_cpu_ratio`` <= 1.02, the
loop's CPU time in this process (every thread of it: the checkpoint writer's too), which a busy
neighbour disturbs far less than wall time; ``loop_ratio`` (wall) stands beside it. One torch
thread by default, so the training's own thread pool does not add its spin to the noise.

    python benchmarks/callback_overhead.py [--steps 120] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlhw.callbacks.checkpoint import Checkpoint  # noqa: E402
from dlhw.callbacks.progress import ProgressBar, SummaryTable  # noqa: E402
from dlhw.callbacks.wandb_logger import WandbLogger  # noqa: E402
from dlhw.core.events import Callback  # noqa: E402
from dlhw.trainers.engine import Engine  # noqa: E402
from pairing import alternate, ratio_summary, report  # noqa: E402


class Timer(Callback):
    """Wall time from the first epoch's start to the last epoch's end: the loop without start-up."""

    def on_epoch_start(self, trainer, epoch):
        if epoch == 0:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, trainer, epoch, metrics):
        self.t1, self.c1 = time.perf_counter(), time.process_time()


class SmallCNN(Engine):
    def __init__(self, callbacks, steps: int, epochs: int = 3):
        super().__init__(callbacks, epochs=epochs, config={"steps": steps}, name="bench", steps_per_epoch=steps // epochs)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 1, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (64,), generator=g)
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 10),
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_epoch(self, epoch):
        for i in range(self.steps_per_epoch):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.log({"train/loss": loss.item(), "train/lr": 0.01})
            self.step_end(i, {"loss": loss})

    def evaluate(self, epoch):
        with torch.no_grad():
            acc = (self.model(self.x).argmax(1) == self.y).float().mean().item()
        return {"val/acc": acc}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}


def run_once(steps: int, full: bool, out: Path) -> tuple[float, float, float]:
    timer = Timer()
    cbs: list[Callback] = [timer]
    if full:
        cbs += [
            WandbLogger(project="bench", mode="offline", out_dir=out, monitor=("val/acc", "max")),
            ProgressBar(),
            SummaryTable(),
            Checkpoint(out / "ckpt", monitor="val/acc"),
        ]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the summary table: stdout holds the JSON line only
        SmallCNN(cbs, steps).fit()
    return timer.t1 - timer.t0, timer.c1 - timer.c0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--steps", 120), ("--repeats", 15), ("--threads", 1)):
        ap.add_argument(flag, type=int, default=default)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        run_once(30, False, Path(tmp))  # warm-up: allocator, kernels
        bare, full = alternate(lambda: run_once(args.steps, False, Path(tmp)),
                               lambda: run_once(args.steps, True, Path(tmp)), args.repeats)
    (bare_loop, bare_cpu, bare_total), (full_loop, full_cpu, full_total) = zip(*bare), zip(*full)
    # The whole fit, W&B's start and finish included, is a fixed cost per run, outside the goal.
    report("callback_overhead", full_cpu, bare_cpu, names=("full_loop_cpu_s", "bare_loop_cpu_s"), goal=1.02,
           key="loop_cpu_ratio", extra={"bare_loop_s": round(min(bare_loop), 4), "full_loop_s": round(min(full_loop), 4),
                                        **ratio_summary(full_loop, bare_loop, key="loop_ratio"),
                                        **ratio_summary(full_total, bare_total, key="total_ratio")},
           steps=args.steps, repeats=args.repeats, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
