"""The AlexNet classification trainer and its weight-decay modes.

Weight decay three ways, for the decayed parameters (weights of convs and linears; biases and
normalisation weights only with ``--decay-all``):

- ``l2``: the loss gets ``lambda/2 * sum ||w||^2``; autograd adds ``lambda * w`` to the gradient.
- ``coupled``: the optimizer's own ``weight_decay`` adds ``lambda * w`` to the gradient.
- ``decoupled``: the weights are multiplied by ``1 - lr * lambda`` apart from the gradient step
  (AdamW / SGDW). ``--optimizer adamw`` is Adam with this decay.

For plain SGD the three are the same update, ``w <- (1 - lr*lambda) w - lr * grad``. With Adam
(or momentum) ``l2``/``coupled`` push ``lambda * w`` through the optimizer's scaling, so the
shrink is no longer ``1 - lr*lambda`` per step: the point of AdamW.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import UsageError
from core.events import Callback, EPOCH_AXIS, STEP_AXIS
from trainers.alexnet import MODELS
from trainers.amp import Precision
from trainers.datasets import DATASETS, Loaders, resolve_dataset
from trainers.engine import Engine, check_finite

OPTIMIZERS = ("sgd", "adam", "adamw")
WD_MODES = ("l2", "coupled", "decoupled")


@dataclass(frozen=True)
class Recipe:
    """A preset of the flags; every field is overridden by the flag of the same name."""

    dataset: str
    variant: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    wd_mode: str = "coupled"
    augment: bool = True
    # Data settings where the recipes' sources differ: d2l trains on every training image, feeds
    # pixels in [0, 1] without normalisation and tests the last epoch's weights.
    val_split: bool = True
    normalize: bool = True
    test_weights: str = "best"


RECIPES: dict[str, Recipe] = {
    # The course notebook: CIFAR-10 at 32x32, Adam 1e-3, batch 256, 25 epochs, best-val
    # checkpoint; about 76.8% test accuracy.
    "course": Recipe("cifar10", "course", "adam", 1e-3, 256, 25),
    # Dive into Deep Learning 8.1: all 60,000 Fashion-MNIST training images, Resize(224) +
    # ToTensor (no normalisation, no augmentation), SGD 0.01, batch 128, 10 epochs, the last
    # epoch's weights on the test set; about 0.885 test accuracy.
    "d2l": Recipe("fashion-mnist", "d2l", "sgd", 0.01, 128, 10, augment=False,
                  val_split=False, normalize=False, test_weights="last"),
    # The offline default: the course network on the digits upscaled to 32x32, sized to reach
    # 95% test accuracy within minutes on two CPU cores. Decoupled decay, so the probe has a
    # shrink factor to show.
    "digits": Recipe("digits", "course", "adam", 1e-3, 32, 5, weight_decay=5e-4, wd_mode="decoupled"),
}
RECIPE_FOR_DATASET = {"digits": "digits", "cifar10": "course", "fashion-mnist": "d2l"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``launch.py alexnet``. Unset flags come from the recipe."""
    g = parser.add_argument_group("data and model")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="preset of every flag below (default: the one for the dataset: digits -> digits, "
                        "cifar10 -> course, fashion-mnist -> d2l); explicit flags override it")
    g.add_argument("--dataset", choices=["auto", *DATASETS.names()], default=None,
                   help="auto (default without --recipe): cifar10 when its files are under --data, else digits")
    g.add_argument("--data", default="data", help="folder holding cifar-10-batches-py/ or FashionMNIST/raw/ (default ./data)")
    g.add_argument("--download", action="store_true", help="fetch cifar10 / fashion-mnist into --data when missing")
    g.add_argument("--variant", choices=MODELS.names(), default=None,
                   help="course: 32x32 CIFAR-10 AlexNet; d2l: original-shape AlexNet on 224x224")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="rotation, flip (not for digits), crop with padding 2 (course and digits recipes: on)")
    g.add_argument("--val-split", action=argparse.BooleanOptionalAction, default=None,
                   help="hold out 10%% of the training images for validation; without it every training image "
                        "trains and the per-epoch evaluation runs on the test set, as d2l does (d2l recipe: off)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="normalise with the training split's mean and std; without it pixels are in [0, 1] "
                        "(d2l recipe: off)")
    g.add_argument("--test-weights", choices=("best", "last"), default=None,
                   help="weights scored on the test set: the best validation epoch's or the last epoch's "
                        "(d2l recipe: last)")
    g.add_argument("--limit-batches", type=int, default=None, metavar="N",
                   help="at most N batches per epoch in training and in each evaluation (quick checks)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    s = parser.add_argument_group("speed")
    s.add_argument("--device-data", choices=("auto", "on", "off"), default="auto",
                   help="on: every split held on the device, batches resized, augmented and normalised there in a "
                        "few batched operations; off: a DataLoader running albumentations per image (auto: on "
                        "unless --workers is set)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader worker processes when --device-data is off (default 0)")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training and evaluation (pays off on long CUDA runs)")
    o = parser.add_argument_group("optimisation and weight decay")
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--batch-size", type=int, default=None)
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="adamw = adam with decoupled decay")
    o.add_argument("--lr", type=float, default=None)
    o.add_argument("--momentum", type=float, default=None, help="SGD momentum (recipes: 0)")
    o.add_argument("--weight-decay", type=float, default=None, metavar="LAMBDA")
    o.add_argument("--wd-mode", choices=WD_MODES, default=None,
                   help="l2: lambda/2 ||w||^2 in the loss; coupled: the optimizer's weight_decay; "
                        "decoupled: w *= 1 - lr*lambda apart from the gradient step")
    o.add_argument("--decay-all", action="store_true", help="decay biases and normalisation weights too")
    p = parser.add_argument_group("weight-decay probe and pictures")
    p.add_argument("--hessian-every", type=int, default=10, metavar="EPOCHS",
                   help="estimate the top Hessian eigenvalue at the start, every EPOCHS epochs and at the end (0: never)")
    p.add_argument("--hessian-iters", type=int, default=10, help="power-iteration steps per estimate (default 10)")
    p.add_argument("--hessian-batch", type=int, default=32, help="size of the fixed training batch it uses (default 32)")
    p.add_argument("--viz-images", type=int, default=4, help="validation images in the feature-map table (default 4)")


def resolve_args(args: argparse.Namespace) -> list[str]:
    """Fill unset flags from the recipe and check them; returns lines saying what was chosen."""
    notes = []
    if args.recipe is not None and args.dataset is None:
        args.dataset = RECIPES[args.recipe].dataset
    args.dataset, why = resolve_dataset(args.dataset or "auto", args.data)
    if why != "--dataset":
        notes.append(why)
    args.recipe = args.recipe or RECIPE_FOR_DATASET[args.dataset]
    if args.optimizer == "adamw":
        if args.wd_mode not in (None, "decoupled"):
            raise UsageError("--optimizer adamw decays decoupled by definition; use --optimizer adam with --wd-mode l2 or coupled")
        args.wd_mode = "decoupled"
    for key, value in vars(RECIPES[args.recipe]).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for flag, value, ok in (
        ("--epochs", args.epochs, args.epochs >= 1),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
        ("--lr", args.lr, args.lr > 0),
        ("--momentum", args.momentum, 0 <= args.momentum < 1),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0),
        ("--hessian-every", args.hessian_every, args.hessian_every >= 0),
        ("--hessian-iters", args.hessian_iters, args.hessian_iters >= 1),
        ("--hessian-batch", args.hessian_batch, args.hessian_batch >= 1),
        ("--viz-images", args.viz_images, args.viz_images >= 0),
        ("--limit-batches", args.limit_batches, args.limit_batches is None or args.limit_batches >= 1),
        ("--workers", args.workers, args.workers >= 0),
    ):
        if not ok:
            raise UsageError(f"{flag} {value} is out of range; see `launch.py alexnet --help`")
    notes.append(
        f"recipe {args.recipe}: {args.variant} AlexNet on {args.dataset}, {args.optimizer} lr {args.lr:g}, "
        f"batch {args.batch_size}, {args.epochs} epochs, weight decay {args.weight_decay:g} ({args.wd_mode})"
    )
    return notes


def param_groups(model: nn.Module, decay_all: bool = False) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) named parameters, the timm / nanoGPT way: biases and every 0-d or
    1-d tensor (normalisation weights) are not decayed unless ``decay_all``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim <= 1 or name.endswith(".bias")) and not decay_all
        (no_decay if skip else decay).append((name, p))
    return decay, no_decay


class SGDW(torch.optim.SGD):
    """SGD with decoupled weight decay, as AdamW is Adam's: each step first multiplies the decayed
    weights by ``1 - lr * lambda``, then takes SGD's (momentum) step on the gradient alone, so
    lambda never enters the momentum buffer. Its groups say ``decoupled_weight_decay`` as Adam's do."""

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
    """Trains an image classifier with cross-entropy, one of three weight-decay modes, and
    reports val metrics per epoch and test metrics (of the best-val weights) at the end.

    Coupled and decoupled decay live in the optimizer (``weight_decay`` of torch's SGD or Adam;
    :class:`SGDW` or Adam's ``decoupled_weight_decay``), so a probe on the optimizer's step hooks
    sees every part of every step.
    """

    def __init__(
        self,
        model: nn.Module,
        loaders: Loaders,
        callbacks: Iterable[Callback] = (),
        *,
        epochs: int,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
        decay_all: bool = False,
        limit_batches: int | None = None,
        hessian_batch: int = 64,
        device: str = "cpu",
        compile: bool = False,
        test_weights: str = "best",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        steps = len(loaders.train) if limit_batches is None else min(limit_batches, len(loaders.train))
        super().__init__(callbacks, epochs=epochs, config=config, name="alexnet", steps_per_epoch=steps)
        if optimizer not in OPTIMIZERS or wd_mode not in WD_MODES:
            raise UsageError(f"optimizer must be one of {OPTIMIZERS} and wd_mode one of {WD_MODES}")
        if optimizer == "adamw" and wd_mode != "decoupled":
            raise UsageError("--optimizer adamw decays decoupled by definition; use --optimizer adam with --wd-mode l2 or coupled")
        self.device = torch.device(device)
        self.precision = Precision(self.device)
        # NHWC lets cuDNN use tensor-core kernels without transposing every activation; input
        # shapes are fixed, so cuDNN's autotuner picks each conv's fastest algorithm once.
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.preserve_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device, memory_format=self.memory_format)
        # The compiled module serves training and evaluation only: the curvature estimates need
        # double backward and the feature maps add hooks, both on the plain module (same weights).
        self.forward = torch.compile(self.model) if compile else self.model
        self.loaders = loaders
        self.lr, self.momentum, self.weight_decay, self.wd_mode = lr, momentum, weight_decay, wd_mode
        self.optimizer_name = optimizer
        self.limit_batches = limit_batches
        self.hessian_batch = hessian_batch
        decay, no_decay = param_groups(model, decay_all)
        self.decay_params = [p for _, p in decay]
        self.group_sizes = {
            "decay_tensors": len(decay), "decay_params": sum(p.numel() for _, p in decay),
            "no_decay_tensors": len(no_decay), "no_decay_params": sum(p.numel() for _, p in no_decay),
        }
        self.summary.update({f"wd/{k}": v for k, v in self.group_sizes.items()})
        self.config["param_groups"] = dict(self.group_sizes)
        in_optimizer = weight_decay if wd_mode != "l2" else 0.0
        groups = [
            {"params": self.decay_params, "weight_decay": in_optimizer},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0},
        ]
        # The fused kernels update all 23-47 M parameters in one pass: on a CPU, Adam's default
        # (foreach) step costs about as much as the forward pass of a batch.
        decoupled = wd_mode == "decoupled"
        if optimizer == "sgd":
            self.optimizer = (SGDW if decoupled else torch.optim.SGD)(groups, lr=lr, momentum=momentum, fused=True)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=lr, fused=True, decoupled_weight_decay=decoupled)
        self._best_acc = -1.0
        self._best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.test_weights = test_weights
        self.test_targets: list[int] = []
        self.test_predictions: list[int] = []

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One optimisation step on a batch; returns its loss and accuracy (and the L2 penalty)."""
        self.model.train()
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        with self.precision.autocast():
            logits = self.forward(x)
        data_loss = nn.functional.cross_entropy(logits.float(), y)
        loss = data_loss
        penalty = None
        if self.wd_mode == "l2" and self.weight_decay:
            penalty = 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self.decay_params)
            loss = data_loss + penalty
        check_finite({"loss": data_loss.item()}, step=self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.unscale(self.optimizer)
        out: dict[str, Any] = {"loss": data_loss.item(), "acc": float((logits.argmax(1) == y).float().mean())}
        if penalty is not None:
            out["penalty"] = penalty.item()
        self.precision.step(self.optimizer)
        return out

    # -- the loop -----------------------------------------------------------------------------
    def _batches(self, loader: torch.utils.data.DataLoader) -> Iterable[tuple[int, Any]]:
        for i, batch in enumerate(loader):
            if self.limit_batches is not None and i >= self.limit_batches:
                return
            yield i, batch

    def train_epoch(self, epoch: int) -> None:
        total = correct = seen = 0.0
        for i, (x, y) in self._batches(self.loaders.train):
            out = self.train_step(x, y)
            metrics = {"train/loss": out["loss"], "train/acc": out["acc"]}
            if "penalty" in out:
                metrics["train/l2_penalty"] = out["penalty"]
            self.log(metrics, axis=STEP_AXIS)
            total += out["loss"] * len(y)
            correct += out["acc"] * len(y)
            seen += len(y)
            self.step_end(i, out)
        self.log({"train/epoch_loss": total / seen, "train/epoch_acc": correct / seen}, axis=EPOCH_AXIS)

    @torch.no_grad()
    def _evaluate(self, loader: torch.utils.data.DataLoader) -> tuple[float, float, list[int], list[int]]:
        self.model.eval()
        loss = 0.0
        targets: list[int] = []
        preds: list[int] = []
        for _, (x, y) in self._batches(loader):
            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with self.precision.autocast():
                logits = self.forward(x).float()
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            targets += y.tolist()
            preds += logits.argmax(1).tolist()
        n = max(len(targets), 1)
        acc = sum(t == p for t, p in zip(targets, preds)) / n
        return loss / n, acc, targets, preds

    def evaluate(self, epoch: int) -> dict[str, float]:
        loss, acc, _, _ = self._evaluate(self.loaders.val)
        if acc > self._best_acc:
            # The course recipe scores the test set with the best-val weights.
            self._best_acc, self.best_epoch = acc, epoch + 1
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return {"val/loss": loss, "val/acc": acc}

    def test(self) -> dict[str, float]:
        if self.test_weights == "best" and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        loss, acc, self.test_targets, self.test_predictions = self._evaluate(self.loaders.test)
        return {"test/loss": loss, "test/acc": acc, "test/best_epoch": self.best_epoch}

    def state_dict(self) -> dict[str, Any]:
        # Weights only: the artifact is for evaluation, and Adam's two moment buffers would triple it.
        return {"model": self.model.state_dict(), "classes": self.loaders.classes,
                "mean": self.loaders.mean, "std": self.loaders.std}

    # -- what the weight-decay probe asks for -------------------------------------------------
    def curvature_loss(self) -> tuple[Callable[[], torch.Tensor], list[nn.Parameter]]:
        """The data loss (no decay term) on a fixed training batch with dropout off, as a closure,
        and the parameters its curvature is taken in."""
        x, y = self.loaders.fixed_batch("train", self.hessian_batch)
        x, y = x.to(self.device), y.to(self.device)

        def loss() -> torch.Tensor:
            was_training = self.model.training
            self.model.eval()  # dropout off: one fixed surface
            try:
                return nn.functional.cross_entropy(self.model(x), y)
            finally:
                self.model.train(was_training)

        return loss, list(self.model.parameters())


def build_trainer(args: argparse.Namespace, callbacks: Iterable[Callback], config: Mapping[str, Any]) -> ClassificationTrainer:
    """Data, model and trainer from resolved flags (see :func:`resolve_args`)."""
    from trainers.alexnet import create_model
    from trainers.datasets import load, make_loaders

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible; use --device cpu")
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    splits = load(args.dataset, args.data, download=args.download)
    if not args.val_split:
        splits = splits.without_val()
    model = create_model(args.variant, in_channels=splits.channels, num_classes=len(splits.classes))
    on_device = args.device_data == "on" or (args.device_data == "auto" and args.workers == 0)
    loaders = make_loaders(splits, size=model.input_size, batch_size=args.batch_size, augment=args.augment,
                           seed=args.seed, workers=args.workers, device=device, on_device=on_device,
                           normalize=args.normalize)
    return ClassificationTrainer(
        model, loaders, callbacks, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, wd_mode=args.wd_mode, decay_all=args.decay_all,
        limit_batches=args.limit_batches, hessian_batch=args.hessian_batch, device=device, compile=args.compile,
        test_weights=args.test_weights, config=config,
    )
