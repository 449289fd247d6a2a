"""Seconds per training iteration: our detection loop against torchvision's reference loop.

``references/detection/engine.py``'s ``train_one_epoch`` (MetricLogger with smoothed values,
a print every ``print_freq`` steps, the loss ``.item()`` check, LinearLR warm-up) is re-implemented
below as it stands, and both loops train the same detector from the same weights on the same
batches with the same SGD, alternating, in one process. Goal: ``ratio`` (ours / reference) <= 1.00.
Both loops clip the gradient norm at the trainer's random-init default (10): without it Mask R-CNN
from random init reaches a non-finite loss within ten steps on CUDA. On CUDA both use AMP as they
would (ours: bf16 where supported; the reference: its ``--amp`` GradScaler path) and the clock
waits for the GPU.

    python benchmarks/detection_step.py [--data DIR] [--steps 6] [--repeats 3] [--model-option 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import math
import sys
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairing import alternate, report  # noqa: E402
from dlhw.trainers.detection.dataset import Augment, PennFudan, collate, generate_pennfudan, read_pennfudan  # noqa: E402
from dlhw.trainers.detection.models import build_detector  # noqa: E402
from dlhw.trainers.detection.trainer import (  # noqa: E402
    PROFILES,
    DetectionTrainer,
    DetectSettings,
    EpochSlices,
    detector_kwargs,
    make_optimizer,
)


# -- the reference loop (torchvision references/detection: utils.SmoothedValue, MetricLogger, train_one_epoch) --

class SmoothedValue:
    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})") -> None:
        self.deque: deque = deque(maxlen=window_size)
        self.total, self.count, self.fmt = 0.0, 0, fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item()

    @property
    def global_avg(self) -> float:
        return self.total / self.count

    @property
    def value(self) -> float:
        return self.deque[-1]

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    def __init__(self, out: io.StringIO, delimiter: str = "  ") -> None:
        self.meters: defaultdict = defaultdict(SmoothedValue)
        self.delimiter, self.out = delimiter, out

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            self.meters[k].update(v.item() if isinstance(v, torch.Tensor) else v)

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable, print_freq: int, header: str = ""):
        i, start = 0, time.time()
        end = time.time()
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        for obj in iterable:
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == len(iterable) - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (len(iterable) - i)))
                print(f"{header} [{i}/{len(iterable)}] eta: {eta} {self} time: {iter_time} data: {data_time}", file=self.out)
            i += 1
            end = time.time()
        print(f"{header} Total time: {datetime.timedelta(seconds=int(time.time() - start))}", file=self.out)


def reference_train_one_epoch(model, optimizer, data_loader, device, epoch, print_freq, out, scaler=None,
                              clip_grad=0.0) -> None:
    model.train()
    metric_logger = MetricLogger(out)
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    lr_scheduler = None
    if epoch == 0:
        lr_scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / 1000,
                                                         total_iters=min(1000, len(data_loader) - 1))
    for images, targets in metric_logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]"):
        images = list(image.to(device) for image in images)
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        loss_value = losses.item()  # reduce_dict is the identity in one process
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"Loss is {loss_value}, stopping training: {loss_dict}")
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        metric_logger.update(loss=losses, **loss_dict)
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])


# -- the comparison ----------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="a PennFudanPed folder (default: generated pedestrians)")
    ap.add_argument("--steps", type=int, default=6, help="training iterations per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-option", type=int, choices=(1, 2), default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="image sizes and RoI counts (default cpu)")
    args = ap.parse_args()
    device = torch.device(args.device)
    clip = 10.0  # the trainer's default from random init (build_trainer)
    settings = DetectSettings(**PROFILES[args.profile], profile=args.profile, option=str(args.model_option), workers=0,
                              device=str(device), eval_batch_size=1, clip_grad=clip)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or generate_pennfudan(Path(tmp) / "gen", n=2 * args.steps, seed=0)
        samples = read_pennfudan(root, limit=2 * args.steps)
    # Same flip as `launch.py detect`; both loops draw the same batches in the same order.
    train = PennFudan(samples, Augment(seed=0))
    torch.manual_seed(0)
    template = build_detector(args.model_option, model="maskrcnn_resnet50_fpn", backbone="mobilenet_v2",
                              weights="none", **detector_kwargs(settings)).model

    def batches_loader():
        return torch.utils.data.DataLoader(train, batch_size=settings.batch_size, collate_fn=collate,
                                           sampler=EpochSlices(len(train), len(train), seed=0))

    def run_ours() -> float:
        trainer = DetectionTrainer(copy.deepcopy(template), settings, train=train, heldout=train, train_eval=train)
        started = clock()
        trainer.train_epoch(0)
        return (clock() - started) / len(trainer.loader)

    def run_reference() -> float:
        model = copy.deepcopy(template).to(device)
        optimizer, _ = make_optimizer(model, settings)
        loader = batches_loader()
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        started = clock()
        reference_train_one_epoch(model, optimizer, loader, device, 0, 10, io.StringIO(), scaler, clip)
        return (clock() - started) / len(loader)

    run_ours(), run_reference()  # warm-up: allocator, oneDNN kernels for these shapes
    ours, ref = alternate(run_ours, run_reference, args.repeats)
    report("detection_step", ours, ref, names=("ours_s_per_iter", "reference_s_per_iter"), goal=1.0,
           model_option=args.model_option,
           device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", profile=args.profile,
           data="penn-fudan" if args.data else "generated", steps=args.steps, repeats=args.repeats,
           threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
