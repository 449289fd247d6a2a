"""What the full W&B callback set costs a training loop.

A short training (a small CNN on fixed random data, CPU, one torch thread) runs with the W&B
logger (offline), the progress bar, the summary table and checkpoints. Each run charges the
callbacks exactly what they cost it: the CPU time of the training thread inside their hooks, plus
every other thread's CPU time in the process (checkpoint writes, artifact hashing, W&B's own
threads), from the first epoch's start until the last epoch's background work is done.
``loop_cpu_ratio`` is the loop's CPU time over the loop's own work (goal <= 1.02); measured within
one run, it does not move with the machine's speed from one run to the next, so its range across
runs is narrow. Bare runs (no callbacks) alternate with the full ones as a cross-check:
``paired_cpu_ratio`` is full over bare loop CPU time, and ``work_vs_bare`` the full runs' own work
over the bare runs' (1 when nothing is charged to the loop that the callbacks caused). W&B's start
and finish are a fixed cost per run, reported apart (``total_ratio``).

    python benchmarks/callback_overhead.py [--steps 120] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
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
from pairing import alternate, ratio_summary  # noqa: E402

HOOKS = ("on_epoch_start", "on_batch_end", "on_validation_end", "on_epoch_end", "on_log", "on_checkpoint_saved")


class Meter:
    """CPU times over the loop: the whole process, the training thread, and the callbacks' hooks on it."""

    def __init__(self) -> None:
        self.open, self.by_plugin = False, {}

    def start(self) -> None:
        self.open, self.cpu0, self.main0, self.wall0 = True, time.process_time(), time.thread_time(), time.perf_counter()

    def stop(self) -> None:
        self.cpu, self.main = time.process_time() - self.cpu0, time.thread_time() - self.main0
        self.wall, self.open = time.perf_counter() - self.wall0, False

    def charge(self, plugin: str, hook):
        @functools.wraps(hook)
        def timed(*args, **kwargs):
            if not self.open:
                return hook(*args, **kwargs)
            t0 = time.thread_time()
            try:
                return hook(*args, **kwargs)
            finally:
                self.by_plugin[plugin] = self.by_plugin.get(plugin, 0.0) + time.thread_time() - t0
        return timed


class Start(Callback):
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def on_epoch_start(self, trainer, epoch):
        if epoch == 0:
            self.meter.start()


class End(Callback):
    """Last in the list: closes the window once the last epoch's checkpoint and artifact are built."""

    def __init__(self, meter: Meter, drain=()) -> None:
        self.meter, self.drain = meter, drain

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch + 1 == trainer.epochs:
            for wait in self.drain:
                wait()
            self.meter.stop()


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


def run_once(steps: int, full: bool, out: Path) -> dict[str, float]:
    meter, drain = Meter(), []
    plugins: list[Callback] = []
    if full:
        logger = WandbLogger(project="bench", mode="offline", out_dir=out, monitor=("val/acc", "max"))
        checkpoint = Checkpoint(out / "ckpt", monitor="val/acc")
        plugins = [logger, ProgressBar(), SummaryTable(), checkpoint]
        # The builder runs one job at a time: an empty job returns once the last artifact is built.
        drain = [checkpoint.writer.wait, lambda: logger._builder.submit(int).result()]
        for plugin in plugins:
            for name in HOOKS:
                setattr(plugin, name, meter.charge(type(plugin).__name__, getattr(plugin, name)))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the summary table: stdout holds the JSON line only
        SmallCNN([Start(meter), *plugins, End(meter, drain)], steps).fit()
    work = meter.main - sum(meter.by_plugin.values())
    # Each plugin's hooks and the other threads, as shares of the loop's own work.
    shares = {**meter.by_plugin, "other threads": meter.cpu - meter.main}
    return {"cpu": meter.cpu, "wall": meter.wall, "work": work, "ratio": meter.cpu / work,
            "total": time.perf_counter() - t0, **{f"share:{k}": v / work for k, v in shares.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--steps", 120), ("--repeats", 15), ("--threads", 1)):
        ap.add_argument(flag, type=int, default=default)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        run_once(30, False, Path(tmp))  # warm-up: allocator, kernels, W&B's first run
        run_once(30, True, Path(tmp))
        bare, full = alternate(lambda: run_once(args.steps, False, Path(tmp)),
                               lambda: run_once(args.steps, True, Path(tmp)), args.repeats)

    def col(runs, key):
        return [r[key] for r in runs]

    result = {"benchmark": "callback_overhead", "steps": args.steps, "repeats": args.repeats,
              "threads": torch.get_num_threads(), **ratio_summary(col(full, "ratio"), [1.0] * len(full), key="loop_cpu_ratio"),
              "goal_loop_cpu_ratio": 1.02, "bare_loop_cpu_s": round(min(col(bare, "cpu")), 4),
              "full_loop_cpu_s": round(min(col(full, "cpu")), 4),
              **ratio_summary(col(full, "cpu"), col(bare, "cpu"), key="paired_cpu_ratio"),
              **ratio_summary(col(full, "work"), col(bare, "work"), key="work_vs_bare"),
              **ratio_summary(col(full, "wall"), col(bare, "wall"), key="loop_ratio"),
              **ratio_summary(col(full, "total"), col(bare, "total"), key="total_ratio")}
    result["cost_share"] = {k.split(":", 1)[1]: round(statistics.median(col(full, k)), 4) for k in full[0]
                            if k.startswith("share:")}
    result["meets_goal"] = result["loop_cpu_ratio"] <= 1.02
    print(json.dumps(result))

if __name__ == "__main__":
    main()
