"""The homework's AlexNets and their trainer, with weight decay as l2, coupled or decoupled (docs/theory.md)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from dlhw.core.distributed import Dist, wrap_ddp
from dlhw.core.errors import UsageError
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Callback
from dlhw.core.registry import Registry
from dlhw.trainers.datasets import DATASETS, Loaders, load, make_loaders, resolve_dataset
from dlhw.trainers.device_data import DeviceBatches
from dlhw.trainers.engine import Engine, Precision, check_finite, pipeline_generators
from dlhw.trainers.settings import make, setting, settings, values

OPTIMIZERS = ("sgd", "adam", "adamw")
WD_MODES = ("l2", "coupled", "decoupled")
MODELS: Registry[AlexNet] = Registry("AlexNet variant")


class AlexNet(nn.Module):
    """``features`` (convs, ReLUs, pools) then ``classifier``; ``input_size``: the square input's side."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, *, input_size: int) -> None:
        super().__init__()
        self.features, self.classifier, self.input_size = features, classifier, input_size

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:  # ("conv1", layer), ... in forward order
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return [(f"conv{i}", m) for i, m in enumerate(convs, start=1)]


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), nn.ReLU(inplace=True)]


@MODELS.register("course")
def course_alexnet(*, in_channels: int = 3, num_classes: int = 10) -> AlexNet:
    """The course notebook's CIFAR-10 AlexNet for 32x32 inputs, initialised as there."""
    features = nn.Sequential(
        *_conv(in_channels, 64, 3, stride=2), nn.MaxPool2d(2),  # 32 -> 16 -> 8
        *_conv(64, 192, 3), nn.MaxPool2d(2),  # 8 -> 4
        *_conv(192, 384, 3),
        *_conv(384, 256, 3),
        *_conv(256, 256, 3), nn.MaxPool2d(2),  # 4 -> 2: 256 * 2 * 2 = 1024 features
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 2 * 2, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    model = AlexNet(features, classifier, input_size=32)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@MODELS.register("d2l")
def d2l_alexnet(*, in_channels: int = 1, num_classes: int = 10) -> AlexNet:
    """Dive into Deep Learning's AlexNet (section 8.1) for 224x224 inputs, initialised as d2l's ``init_cnn``."""
    features = nn.Sequential(
        *_conv(in_channels, 96, 11, stride=4, padding=1), nn.MaxPool2d(3, stride=2),  # 224 -> 54 -> 26
        *_conv(96, 256, 5, padding=2), nn.MaxPool2d(3, stride=2),  # 26 -> 12
        *_conv(256, 384, 3),
        *_conv(384, 384, 3),
        *_conv(384, 256, 3), nn.MaxPool2d(3, stride=2),  # 12 -> 5: 256 * 5 * 5 = 6400 features
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    model = AlexNet(features, classifier, input_size=224)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
    return model


# Each recipe fills the settings whose flags were left unset: the course notebook, d2l 8.1, the offline default.
_RECIPE = {"momentum": 0.0, "weight_decay": 0.0, "wd_mode": "coupled", "augment": True, "val_split": True,
           "normalize": True, "test_weights": "best"}
RECIPES: dict[str, dict[str, Any]] = {
    "course": {**_RECIPE, "dataset": "cifar10", "variant": "course", "optimizer": "adam", "lr": 1e-3,
               "batch_size": 256, "epochs": 25},
    "d2l": {**_RECIPE, "dataset": "fashion-mnist", "variant": "d2l", "optimizer": "sgd", "lr": 0.01, "batch_size": 128,
            "epochs": 10, "augment": False, "val_split": False, "normalize": False, "test_weights": "last"},
    "digits": {**_RECIPE, "dataset": "digits", "variant": "course", "optimizer": "adam", "lr": 1e-3, "batch_size": 32,
               "epochs": 5, "weight_decay": 5e-4, "wd_mode": "decoupled"},
}
ADAMW_ERROR = "--optimizer adamw decays decoupled by definition; use --optimizer adam with --wd-mode l2 or coupled"

DATA, SPEED, OPTIM, PROBE = "data and model", "speed", "optimisation and weight decay", "weight-decay probe and pictures"


@settings
class AlexNetSettings:
    recipe: str = setting(help="preset of every flag below (default: the one for the dataset: digits -> digits, "
                               "cifar10 -> course, fashion-mnist -> d2l); explicit flags override it",
                          choices=sorted(RECIPES), group=DATA)
    dataset: str = setting(help="auto (default without --recipe): cifar10 when its files are under --data, else digits",
                           choices=["auto", *DATASETS.names()], group=DATA)
    data: str = setting("data", "folder holding cifar-10-batches-py/ or FashionMNIST/raw/ (default ./data)", group=DATA)
    download: bool = setting(False, "fetch cifar10 / fashion-mnist into --data when missing", group=DATA)
    variant: str = setting(help="course: 32x32 CIFAR-10 AlexNet; d2l: original-shape AlexNet on 224x224",
                           choices=MODELS.names(), group=DATA)
    augment: bool = setting(help="rotation, flip (not for digits), crop with padding 2 (course and digits recipes: on)",
                            group=DATA)
    val_split: bool = setting(help="hold out 10%% of the training images for validation; without it every training "
                                   "image trains and the per-epoch evaluation runs on the test set, as d2l does "
                                   "(d2l recipe: off)", group=DATA)
    normalize: bool = setting(help="normalise with the training split's mean and std; without it pixels are in [0, 1] "
                                   "(d2l recipe: off)", group=DATA)
    test_weights: str = setting(help="weights scored on the test set: the best validation epoch's or the last "
                                     "epoch's (d2l recipe: last)", choices=("best", "last"), group=DATA)
    limit_batches: int | None = setting(None, "at most N batches per epoch in training and in each evaluation "
                                              "(quick checks)", metavar="N", group=DATA, min=1)
    device: str = setting("auto", "default: cuda when available", choices=("auto", "cpu", "cuda"), group=DATA)
    device_data: str = setting("auto", "on: every split held on the device, batches resized, augmented and "
                                       "normalised there in a few batched operations; off: a DataLoader running "
                                       "albumentations per image (auto: on unless --workers is set)",
                               choices=("auto", "on", "off"), group=SPEED)
    workers: int = setting(0, "DataLoader worker processes when --device-data is off (default 0)", group=SPEED, min=0)
    compile: bool = setting(False, "torch.compile the model for training and evaluation (pays off on long CUDA runs)",
                            group=SPEED)
    epochs: int = setting(help="training epochs (from the recipe)", group=OPTIM, above=0)
    batch_size: int = setting(help="images per step (from the recipe)", group=OPTIM, above=0)
    optimizer: str = setting(help="adamw = adam with decoupled decay", choices=OPTIMIZERS, group=OPTIM)
    lr: float = setting(help="learning rate (from the recipe)", group=OPTIM, above=0)
    momentum: float = setting(help="SGD momentum (recipes: 0)", group=OPTIM, min=0, below=1)
    weight_decay: float = setting(help="decay strength lambda (from the recipe)", metavar="LAMBDA", group=OPTIM, min=0)
    wd_mode: str = setting(help="l2: lambda/2 ||w||^2 in the loss; coupled: the optimizer's weight_decay; decoupled: "
                                "w *= 1 - lr*lambda apart from the gradient step", choices=WD_MODES, group=OPTIM)
    decay_all: bool = setting(False, "decay biases and normalisation weights too", group=OPTIM)
    hessian_every: int = setting(10, "estimate the top Hessian eigenvalue at the start, every EPOCHS epochs and at "
                                     "the end (0: never)", metavar="EPOCHS", group=PROBE, min=0)
    hessian_iters: int = setting(10, "power-iteration steps per estimate (default 10)", group=PROBE, min=1)
    decay_every: int = setting(10, "measure the decay factor of one optimizer step in N against a decay-free shadow "
                                   "optimizer, about one more optimizer step (default 10; 1: every step)",
                               metavar="STEPS", group=PROBE, min=1)
    hessian_batch: int = setting(32, "size of the fixed training batch it uses (default 32)", group=PROBE, min=1)
    viz_images: int = setting(4, "validation images in the feature-map table (default 4)", group=PROBE, min=0)
    seed: int = setting(0, "random seed (the global --seed)", flag=False)
    world_size: int = setting(1, "processes training the model together (torchrun's WORLD_SIZE); "
                                 "--batch-size is per process", flag=False)


def resolve_args(args: argparse.Namespace) -> tuple[AlexNetSettings, list[str]]:
    """The settings: unset flags filled from the recipe, then checked; with lines saying what was chosen."""
    v = values(AlexNetSettings, args)
    if v["recipe"] is not None and v["dataset"] is None:
        v["dataset"] = RECIPES[v["recipe"]]["dataset"]
    v["dataset"], why = resolve_dataset(v["dataset"] or "auto", v["data"])
    notes = [why] if why != "--dataset" else []
    v["recipe"] = v["recipe"] or next(name for name, r in RECIPES.items() if r["dataset"] == v["dataset"])
    if v["optimizer"] == "adamw":
        if v["wd_mode"] not in (None, "decoupled"):
            raise UsageError(ADAMW_ERROR)
        v["wd_mode"] = "decoupled"
    v.update({key: value for key, value in RECIPES[v["recipe"]].items() if v.get(key) is None})
    s = make(AlexNetSettings, v)
    notes.append(f"recipe {s.recipe}: {s.variant} AlexNet on {s.dataset}, {s.optimizer} lr {s.lr:g}, batch "
                 f"{s.batch_size}, {s.epochs} epochs, weight decay {s.weight_decay:g} ({s.wd_mode})")
    return s, notes


def param_groups(model: nn.Module, decay_all: bool = False) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    """(decayed, not decayed) named parameters, the timm way: biases and 0-d/1-d tensors only with ``decay_all``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim <= 1 or name.endswith(".bias")) and not decay_all
        (no_decay if skip else decay).append((name, p))
    return decay, no_decay


class SGDW(torch.optim.SGD):
    """SGD with decoupled weight decay (torch's has none): ``w *= 1 - lr * lambda``, then SGD on the gradient alone."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.defaults["decoupled_weight_decay"] = True
        for group in self.param_groups:
            group.setdefault("decoupled_weight_decay", True)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        decays = [g["weight_decay"] for g in self.param_groups]
        for group, decay in zip(self.param_groups, decays):
            params = [p for p in group["params"] if p.grad is not None]
            if decay and params:
                torch._foreach_mul_(params, 1 - group["lr"] * decay)
            group["weight_decay"] = 0.0
        try:
            # SGD's own update without its hook wrapper: this optimizer's step hooks run once, around both parts.
            return _SGD_UPDATE(self, closure)
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay


_SGD_UPDATE = inspect.unwrap(torch.optim.SGD.step)


class ClassificationTrainer(Engine):
    """A classifier with cross-entropy and a weight-decay mode; the test scores the best-val or the last weights."""

    resumed = ("best_acc", "best_epoch", "best_model", "epoch_totals")

    def __init__(self, model: nn.Module, loaders: Loaders, settings: AlexNetSettings,
                 callbacks: Iterable[Callback] = (), dist: Dist | None = None) -> None:
        s = self.settings = settings
        steps = len(loaders.train) if s.limit_batches is None else min(s.limit_batches, len(loaders.train))
        super().__init__(callbacks, epochs=s.epochs, config=dataclasses.asdict(s), name="alexnet",
                         steps_per_epoch=steps, dist=dist)
        self.device = self.dist.device
        self.precision = Precision(self.device)
        # NHWC: cuDNN's tensor-core kernels without transposes; fixed shapes: autotune each conv once.
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.preserve_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device, memory_format=self.memory_format)
        # Hooks use the plain module; DDP's forward syncs no buffers, so evaluation's uneven shards can run through it.
        net = wrap_ddp(self.model, self.dist, forward_sync_buffers=False)
        self.forward = torch.compile(net) if s.compile else net
        self.loaders = loaders
        self.weight_decay, self.wd_mode, self.optimizer_name = s.weight_decay, s.wd_mode, s.optimizer
        decay, no_decay = param_groups(model, s.decay_all)
        self.decay_params = [p for _, p in decay]
        sizes = {"decay_tensors": len(decay), "decay_params": sum(p.numel() for _, p in decay),
                 "no_decay_tensors": len(no_decay), "no_decay_params": sum(p.numel() for _, p in no_decay)}
        self.summary.update({f"wd/{k}": v for k, v in sizes.items()})
        self.config["_param_groups"] = sizes
        groups = [{"params": self.decay_params, "weight_decay": s.weight_decay if s.wd_mode != "l2" else 0.0},
                  {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
        # Fused kernels update all parameters in one pass, far cheaper than the default on a CPU.
        decoupled = s.wd_mode == "decoupled"
        if s.optimizer == "sgd":
            self.optimizer = (SGDW if decoupled else torch.optim.SGD)(groups, lr=s.lr, momentum=s.momentum, fused=True)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=s.lr, fused=True, decoupled_weight_decay=decoupled)
        self.best_acc, self.best_epoch = -1.0, 0
        self.best_model: dict[str, torch.Tensor] | None = None
        self.test_targets, self.test_predictions = [], []  # of the whole test set, after the fit
        self.epoch_totals = [0.0, 0.0, 0.0]  # the epoch's summed loss, summed accuracy and images seen

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        self.model.train()
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        with self.precision.autocast():
            logits = self.forward(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        out: dict[str, Any] = {"loss": loss.item(), "acc": float((logits.argmax(1) == y).float().mean())}
        check_finite({"loss": out["loss"]}, step=self.global_step)
        if self.wd_mode == "l2" and self.weight_decay:
            penalty = 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self.decay_params)
            loss = loss + penalty
            out["l2_penalty"] = penalty.item()
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.scaler.scale(loss).backward()
        self.precision.scaler.unscale_(self.optimizer)
        self.precision.step(self.optimizer)
        return out

    def train_epoch(self, epoch: int) -> None:
        if isinstance(self.loaders.train, DeviceBatches):
            self.loaders.train.set_epoch(epoch)
        if not self.resume_batch:  # a resumed epoch keeps the totals of the steps it already took
            self.epoch_totals = [0.0, 0.0, 0.0]
        totals = self.epoch_totals
        for i, (x, y) in self.epoch_batches(islice(self.loaders.train, self.settings.limit_batches)):
            out = self.train_step(x, y)
            n = len(y)
            if self.dist.distributed:  # the global batch's numbers, as one process with all of it has them
                total = self.dist.all_reduce_sum({"loss": out["loss"] * n, "acc": out["acc"] * n, "n": n})
                n = int(total["n"])
                out.update(loss=total["loss"] / n, acc=total["acc"] / n)
            self.log({f"train/{k}": v for k, v in out.items()}, axis=STEP_AXIS)
            totals[0] += out["loss"] * n
            totals[1] += out["acc"] * n
            totals[2] += n
            self.step_end(i, out)
        self.log({"train/epoch_loss": totals[0] / totals[2], "train/epoch_acc": totals[1] / totals[2]}, axis=EPOCH_AXIS)

    @torch.no_grad()
    def _evaluate(self, loader: torch.utils.data.DataLoader) -> tuple[float, float, list[int], list[int]]:
        """Mean loss and accuracy (of the whole split under torchrun), this rank's targets and predictions."""
        self.model.eval()
        loss, targets, preds = 0.0, [], []
        for x, y in islice(loader, self.settings.limit_batches):
            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with self.precision.autocast():
                logits = self.forward(x).float()
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            targets += y.tolist()
            preds += logits.argmax(1).tolist()
        correct = sum(t == p for t, p in zip(targets, preds))
        means = self.dist.all_reduce_mean({"loss": (loss, len(targets)), "acc": (correct, len(targets))})
        return means["loss"], means["acc"], targets, preds

    def evaluate(self, epoch: int) -> dict[str, float]:
        loss, acc, _, _ = self._evaluate(self.loaders.val)
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch + 1
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return {"val/loss": loss, "val/acc": acc}

    def test(self) -> dict[str, float]:
        if self.settings.test_weights == "best" and self.best_model is not None:
            self.model.load_state_dict(self.best_model)
        loss, acc, targets, preds = self._evaluate(self.loaders.test)
        parts = self.dist.all_gather_object((targets, preds))
        self.test_targets = [t for part_targets, _ in parts for t in part_targets]
        self.test_predictions = [p for _, part_preds in parts for p in part_preds]
        return {"test/loss": loss, "test/acc": acc, "test/best_epoch": self.best_epoch}

    def state_dict(self) -> dict[str, Any]:  # the weights and how to feed them
        return {**super().state_dict(), "classes": self.loaders.classes, "mean": self.loaders.mean,
                "std": self.loaders.std}

    def data_generators(self) -> dict[str, Any]:
        # Device batches draw from (seed, epoch) alone; the pipeline's generators are out of reach in workers.
        train = self.loaders.train
        if isinstance(train, DeviceBatches):
            return {}
        return {"sampler": train.generator, **pipeline_generators("augment", train.dataset.transform)}

    def curvature_loss(self) -> tuple[Callable[[], torch.Tensor], list[nn.Parameter]]:
        """The data loss on a fixed training batch with dropout off, as a closure, and its parameters."""
        x, y = (t.to(self.device) for t in self.loaders.fixed_batch("train", self.settings.hessian_batch))

        def loss() -> torch.Tensor:
            was_training = self.model.training
            self.model.eval()  # dropout off: one fixed surface
            try:
                return nn.functional.cross_entropy(self.model(x), y)
            finally:
                self.model.train(was_training)

        return loss, list(self.model.parameters())


def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible; use --device cpu")
    return "cuda" if name != "cpu" and torch.cuda.is_available() else "cpu"


def build_trainer(settings: AlexNetSettings, callbacks: Iterable[Callback], dist: Dist) -> Engine:
    """Data, model and trainer from the resolved settings (the run's config); ``dist``: this process's torchrun job."""
    splits = load(settings.dataset, settings.data, download=settings.download)
    if not settings.val_split:
        splits = splits.without_val()
    model = MODELS.create(settings.variant, in_channels=splits.channels, num_classes=len(splits.classes))
    on_device = settings.device_data == "on" or (settings.device_data == "auto" and settings.workers == 0)
    loaders = make_loaders(splits, size=model.input_size, batch_size=settings.batch_size, augment=settings.augment,
                           seed=settings.seed, workers=settings.workers, device=dist.device, on_device=on_device,
                           normalize=settings.normalize, rank=dist.rank, world=dist.world_size)
    return ClassificationTrainer(model, loaders, settings, callbacks, dist)
