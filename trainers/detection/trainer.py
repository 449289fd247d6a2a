"""torchvision's detection fine-tuning tutorial as an :class:`Engine` (flags, profiles, COCO AP), and the photo step."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torchvision.transforms.functional import to_tensor

from dlhw.core.distributed import Dist, ShardedSampler, shard, wrap_ddp
from dlhw.core.events import Callback, Session
from dlhw.trainers.detection.coco_eval import coco_ground_truth, coco_metrics
from dlhw.trainers.detection.dataset import (HOLDOUT, Augment, PennFudan, Photo, collate, read_pennfudan, resolve_data,
                                             split)
from dlhw.trainers.detection.models import BACKBONES, MODELS, build_detector, check_backbone
from dlhw.trainers.engine import Engine, Precision, check_finite, pipeline_generators
from dlhw.trainers.settings import check, make, setting, settings, values
from dlhw.viz.images import THRESHOLDS, people_counts

# Each profile fills the DetectSettings fields whose flags were left unset (their help says what each is).
_TUTORIAL = {"momentum": 0.9, "weight_decay": 5e-4, "step_size": 3, "gamma": 0.1}
PROFILES: dict[str, dict[str, Any]] = {
    # The tutorial, unchanged (torchvision's detector defaults for size and sampling).
    "full": {"epochs": 10, "lr": 0.005, "batch_size": 2, "min_size": 800, "max_size": 1333, "rois_per_image": 512,
             "rpn_post_nms_train": 2000, "rpn_post_nms_test": 1000, "detections_per_image": 100,
             "train_eval_images": 0, "images_per_epoch": 0, **_TUTORIAL},
    # Sized for 2 CPU cores: option 2's box head dominates (few RoIs and proposals); <= 8 people per image.
    "cpu": {"epochs": 2, "lr": 0.005, "batch_size": 2, "min_size": 160, "max_size": 272, "rois_per_image": 64,
            "rpn_post_nms_train": 600, "rpn_post_nms_test": 150, "detections_per_image": 20,
            "train_eval_images": 40, "images_per_epoch": 0, **_TUTORIAL},
}
OPTIONS = {"1": (1,), "2": (2,), "both": (1, 2)}


@settings
class DetectSettings:
    data: str | None = setting(None, "an unpacked PennFudanPed folder (default: download it into the cache; offline, "
                                     "generated pedestrians in the same layout)", metavar="DIR")
    profile: str = setting(help="full: the tutorial's recipe (default with CUDA); cpu: smaller images and fewer epochs "
                                "to finish in 15 minutes on 2 cores (default without CUDA)", choices=sorted(PROFILES))
    option: str = setting("both", "which model(s) to train: 1 (Mask R-CNN R50-FPN), 2 (Faster R-CNN on --backbone), "
                                  "both; a model's own run records 1 or 2", choices=sorted(OPTIONS))
    model: str = setting("maskrcnn_resnet50_fpn", f"option 1 model: {', '.join(MODELS.names())} "
                                                  f"(default maskrcnn_resnet50_fpn)", metavar="NAME")
    backbone: str = setting("mobilenet_v2", f"option 2 backbone: {', '.join(BACKBONES.names())}, or any timm model "
                                            "as timm/NAME (default mobilenet_v2, the tutorial's)", metavar="NAME")
    levels: int = setting(3, "timm backbones: how many of the last feature maps to use, with an FPN when > 1 (default 3)")
    weights: str = setting("auto", "auto: pretrained weights when cached or downloadable, else random init; none: "
                                   "random init", choices=("auto", "none"))
    image: str | None = setting(None, "photo both models are run on at the end (default: the Beatles photo on "
                                      "Wikimedia Commons)", metavar="PATH_OR_URL")
    clip_grad: float | None = setting(None, "clip the gradient norm (default: off with pretrained weights, as in the "
                                            "tutorial; 10 from random init, where the tutorial's lr diverges within "
                                            "the first epoch)", metavar="NORM")
    skip_photo: bool = setting(False, "train and evaluate only, one W&B run per model (what sweep trials use)")
    epochs: int = setting(help="override the profile's epochs", above=0)
    lr: float = setting(help="override the profile's learning rate (0.005)", above=0)
    batch_size: int = setting(help="override the profile's batch size (2)", above=0)
    min_size: int = setting(help="override the detector's resize (shorter side)", above=0)
    max_size: int = setting(help="override the detector's cap on the longer side", above=0)
    train_eval_images: int = setting(help="training images scored for train AP each epoch (0 = all; cpu profile: 40); "
                                          "the run records how many were scored", min=0)
    images_per_epoch: int = setting(help="training images per epoch, later epochs taking the next ones "
                                         "(0 = all, the default)", min=0)
    rois_per_image: int = setting(help="RoIs sampled per image for the box head while training", flag=False)
    rpn_post_nms_train: int = setting(help="proposals kept per image after NMS while training", flag=False)
    rpn_post_nms_test: int = setting(help="proposals kept per image after NMS while predicting", flag=False)
    detections_per_image: int = setting(help="detections kept after NMS", flag=False)
    momentum: float = setting(help="SGD momentum", flag=False)
    weight_decay: float = setting(help="SGD weight decay", flag=False)
    step_size: int = setting(help="StepLR step in epochs", flag=False)
    gamma: float = setting(help="StepLR factor", flag=False)
    holdout: int = setting(HOLDOUT, f"held-out images (default {HOLDOUT}, the tutorial's)")
    limit: int | None = setting(None, "use only the first N images of the dataset (quick tries)", min=2)
    jitter: float = setting(0.0, "photometric jitter strength (default 0: flip only)")
    viz_images: int = setting(4, "held-out images in each epoch's prediction table")
    workers: int = setting(help="data-loader workers (default: 0 on CPU, 4 on CUDA)")
    device: str = setting(help="torch device (default: cuda when available)")
    train_eval_every: int = setting(0, "score the training images every K epochs too (default 0: after the last "
                                       "epoch only; held-out images are scored every epoch)", metavar="K", min=0)
    eval_batch_size: int = setting(help="images per forward pass when scoring (default: 8 on CUDA, 1 on CPU, where "
                                        "padding images of different sizes to one batch costs more than it saves)", min=1)
    seed: int = setting(0, "random seed (the global --seed)", flag=False)
    world_size: int = setting(1, "processes training each model together (torchrun's WORLD_SIZE); --batch-size "
                                 "is per process", flag=False)
    data_root: str | None = setting(None, "the folder the images were read from", flag=False)
    data_source: str | None = setting(None, "penn-fudan or generated", flag=False)
    train_images: int | None = setting(None, "training images", flag=False)
    heldout_images: int | None = setting(None, "held-out images", flag=False)
    model_label: str | None = setting(None, "the model this run trains, as tables name it", flag=False)
    start_weights: str | None = setting(None, "the weights training started from: pretrained or random", flag=False)
    photo: str | None = setting(None, "the photo both models ran on (the photo run)", flag=False)


def detector_kwargs(s: DetectSettings) -> dict[str, Any]:
    return {"min_size": s.min_size, "max_size": s.max_size, "box_batch_size_per_image": s.rois_per_image,
            "rpn_post_nms_top_n_train": s.rpn_post_nms_train, "rpn_post_nms_top_n_test": s.rpn_post_nms_test,
            "box_detections_per_img": s.detections_per_image}


def make_optimizer(model: nn.Module, s: DetectSettings) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)


class EpochSlices(torch.utils.data.Sampler):
    """``per_epoch`` indices per epoch, from fixed-seed permutations of range(n) in turn: each image equally often."""

    def __init__(self, n: int, per_epoch: int, seed: int) -> None:
        self.n, self.per_epoch, self.seed, self.epoch = n, min(per_epoch, n), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        out: list[int] = []
        start = self.epoch * self.per_epoch
        while len(out) < self.per_epoch:
            cycle, offset = divmod(start + len(out), self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + cycle)).tolist()
            out += perm[offset:offset + self.per_epoch - len(out)]
        return iter(out)


class DetectionTrainer(Engine):
    """One detector fine-tuned with the tutorial's recipe and scored with pycocotools; :attr:`viz`: the images shown."""

    resumed = ("step_seconds",)

    def __init__(self, model: nn.Module, settings: DetectSettings, *, train: PennFudan, heldout: PennFudan,
                 train_eval: PennFudan, callbacks: Iterable[Callback] = (), dist: Dist | None = None) -> None:
        s = self.settings = settings
        dist = dist if dist is not None else Dist(device=torch.device(s.device))
        self.device = dist.device
        self.sampler = EpochSlices(len(train), s.images_per_epoch or len(train), s.seed)
        if dist.distributed:
            self.sampler = ShardedSampler(self.sampler, dist.rank, dist.world_size)
        self.loader = torch.utils.data.DataLoader(train, batch_size=s.batch_size, sampler=self.sampler,
                                                  collate_fn=collate, num_workers=s.workers,
                                                  pin_memory=self.device.type == "cuda")
        super().__init__(callbacks, epochs=s.epochs, config=asdict(s), name=f"detect-option{s.option}",
                         steps_per_epoch=len(self.loader), dist=dist)
        self.model = model.to(self.device)
        # DDP's forward syncs no buffers (frozen batch norms); prediction's uneven shards use the module itself.
        self.net = wrap_ddp(self.model, dist, forward_sync_buffers=False)
        self.heldout, self.train_eval = heldout, train_eval
        self.optimizer, self.scheduler = make_optimizer(self.model, s)
        self.precision = Precision(self.device)
        self.iou_types = ("bbox", "segm") if getattr(model.roi_heads, "has_mask", lambda: False)() else ("bbox",)
        order = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(s.seed)).tolist()
        self.viz_ids = sorted(order[:s.viz_images])
        self.viz: list[tuple[torch.Tensor, dict, dict]] = []
        self._gt: dict[str, Any] = {}
        self.step_seconds: list[float] = []
        self.ramp = self._ramp_state = None  # the first epoch's warm-up, and its state from a checkpoint

    def train_epoch(self, epoch: int) -> None:
        self.model.train()
        self.sampler.set_epoch(epoch)
        # The first epoch ramps the learning rate up linearly from 1e-3 x lr, as references/detection does.
        self.ramp = None
        if epoch == 0 and len(self.loader) > 1:
            iters = min(1000, len(self.loader) - 1)
            self.ramp = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=1e-3, total_iters=iters)
            if self._ramp_state is not None:  # building it rescaled the lr; the checkpoint's position puts it back
                self.ramp.load_state_dict(self._ramp_state)
                for group, lr in zip(self.optimizer.param_groups, self.ramp.get_last_lr()):
                    group["lr"] = lr
        self._ramp_state = None
        for i, (images, targets) in self.epoch_batches(self.loader):
            started = time.perf_counter()
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
            with self.precision.autocast():
                loss_dict = self.net(images, targets)
            loss = sum(loss_dict.values())
            terms = {**{f"train/{k}": v.item() for k, v in loss_dict.items()}, "train/loss": loss.item()}
            if self.dist.distributed:  # the global batch's losses (every rank's batch is as large)
                terms = self.dist.all_reduce_mean(terms)
            self.log({**terms, "train/lr": self.optimizer.param_groups[0]["lr"]})  # logged even when non-finite
            check_finite(terms, step=self.global_step)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.scaler.scale(loss).backward()
            if self.settings.clip_grad:
                self.precision.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad)
                self.log({"train/grad_norm": float(norm)})
            # The warm-up counts real steps only: fp16's scaler skips its first few.
            if self.precision.step(self.optimizer) and self.ramp is not None:
                self.ramp.step()
            self.step_seconds.append(time.perf_counter() - started)
            self.step_end(i, {"loss": terms["train/loss"]})
        self.scheduler.step()

    @torch.inference_mode()
    def predict(self, dataset: PennFudan, keep: Sequence[int] = ()) -> dict[int, dict[str, torch.Tensor]]:
        """CPU outputs on ``dataset`` (this rank's shard) by image id; images in ``keep`` also go to :attr:`viz`."""
        self.model.eval()
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        mine = shard(range(len(dataset)), self.dist.rank, self.dist.world_size, even=False)
        kept: list[tuple[int, dict[str, torch.Tensor]]] = []
        for start in range(0, len(mine), self.settings.eval_batch_size):
            idx = mine[start:start + self.settings.eval_batch_size]
            pairs = [dataset[i] for i in idx]
            with self.precision.autocast():
                batch = self.model([image.to(self.device, non_blocking=True) for image, _ in pairs])
            for i, (_, target), out in zip(idx, pairs, batch):
                out = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
                outputs[int(target["image_id"])] = out
                if i in keep:
                    kept.append((i, out))
        if self.dist.distributed and keep:
            # The predictions travel, not the images: rank 0 reads the few shown itself.
            kept = sorted((pair for part in self.dist.all_gather_object(kept) for pair in part), key=lambda p: p[0])
            if not self.dist.is_main:
                kept = []
        self.viz += [(*dataset[i], out) for i, out in kept]
        return outputs

    def evaluate(self, epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        self.viz = []
        metrics: dict[str, float] = {}
        splits = [("val", self.heldout, self.viz_ids)]
        every = self.settings.train_eval_every
        if epoch + 1 == self.epochs or (every > 0 and (epoch + 1) % every == 0):
            splits.insert(0, ("train", self.train_eval, ()))
        for prefix, dataset, keep in splits:
            if prefix not in self._gt:  # converted once
                targets = [dataset[i][1] for i in range(len(dataset))]
                self._gt[prefix] = coco_ground_truth(targets, [s.image.shape[:2] for s in dataset.samples])
            scores = coco_metrics(self._gt[prefix], self.predict(dataset, keep), self.iou_types, self.dist)
            metrics.update({f"{prefix}/{k}": v for k, v in scores.items()})
        # The median step time is robust to a noisy shared machine.
        metrics["train/sec_per_iter"] = statistics.median(self.step_seconds) if self.step_seconds else float("nan")
        metrics["time/eval_seconds"] = time.perf_counter() - started
        return metrics

    def state_dict(self) -> dict[str, Any]:  # the profile sized the detector
        return {**super().state_dict(), "profile": {k: getattr(self.settings, k) for k in PROFILES["full"]}}

    def training_state(self) -> dict[str, Any]:
        ramp = self.ramp.state_dict() if self.ramp is not None and self.batch_in_epoch else None
        return {**super().training_state(), "ramp": ramp}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._ramp_state = state.get("ramp")

    def data_generators(self) -> dict[str, Any]:
        # The image order comes from (seed, epoch); flips and jitter from the pipeline's (out of reach in workers).
        augment = getattr(self.loader.dataset.transform, "pipeline", None)
        return pipeline_generators("augment", augment) if augment is not None else {}


@dataclass
class Plan:
    """Everything ``launch.py detect`` resolved before training: the settings and the splits."""
    settings: DetectSettings
    options: tuple[int, ...]
    train: PennFudan
    heldout: PennFudan
    train_eval: PennFudan


def prepare(args: argparse.Namespace, *, verbose: bool = True, rank: int = 0) -> Plan:
    """Resolve profile, data and splits (every user error raised here, before any run starts); print the plan."""
    check(DetectSettings, vars(args))
    name = args.profile or ("full" if torch.cuda.is_available() else "cpu")
    profile = {k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in PROFILES[name].items()}
    options = OPTIONS[args.option]
    if 1 in options:
        MODELS.get(args.model)
    if 2 in options:
        check_backbone(args.backbone)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root, source = resolve_data(args.data, seed=args.seed)
    samples = read_pennfudan(root, limit=args.limit)
    train_idx, held_idx = split(len(samples), args.seed, args.holdout)
    train = [samples[i] for i in train_idx]
    profile["train_eval_images"] = profile["train_eval_images"] or len(train)
    cuda = device.startswith("cuda")
    settings = make(DetectSettings, {
        **values(DetectSettings, args), **profile, "profile": name, "device": device,
        "workers": args.workers if args.workers is not None else (4 if cuda else 0),
        "eval_batch_size": args.eval_batch_size or (8 if cuda else 1), "data_root": str(root), "data_source": source,
        "train_images": len(train), "heldout_images": len(held_idx)})
    # The permutation already shuffled the training images: train_eval is a fixed-seed subset.
    plan = Plan(settings=settings, options=options,
                train=PennFudan(train, Augment(jitter=args.jitter, seed=args.seed + rank)),
                heldout=PennFudan([samples[i] for i in held_idx]),
                train_eval=PennFudan(train[:profile["train_eval_images"]]))
    if verbose:
        shown = ", ".join(f"{k}={v}" for k, v in profile.items())
        print(f"profile {name}: {shown}; data {source} ({root}): {len(plan.train)} train, {len(plan.heldout)} held out, "
              f"train AP on {len(plan.train_eval)}; device {device}{' with AMP' if cuda else ''}")
    return plan


def model_label(option: int, settings: DetectSettings) -> str:
    return f"option {option}: {settings.model if option == 1 else 'fasterrcnn_' + settings.backbone.replace('/', '_')}"


def build_trainer(plan: Plan, option: int, callbacks: Iterable[Callback], dist: Dist | None = None) -> DetectionTrainer:
    """The detector of ``option`` in a :class:`DetectionTrainer`, its config the plan's settings for this model."""
    s = plan.settings
    built = build_detector(option, model=s.model, backbone=s.backbone, weights=s.weights, levels=s.levels,
                           **detector_kwargs(s))
    clip = s.clip_grad if s.clip_grad is not None else (10.0 if built.weights == "random" else 0.0)
    s = replace(s, option=str(option), model_label=model_label(option, s), start_weights=built.weights, clip_grad=clip)
    return DetectionTrainer(built.model, s, train=plan.train, heldout=plan.heldout, train_eval=plan.train_eval,
                            callbacks=callbacks, dist=dist)


@torch.inference_mode()
def detect(model: nn.Module, image: torch.Tensor, *, repeats: int = 3) -> tuple[dict[str, torch.Tensor], float]:
    """The model's detections on ``image`` and the median inference time in milliseconds."""
    model.eval()
    device = next(model.parameters()).device
    times, out = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        out = model([image.to(device)])[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return {k: v.cpu() for k, v in out.items()}, statistics.median(times)


def compare_on_photo(photo: Photo, models: Mapping[str, nn.Module], results: Mapping[str, Mapping[str, Any]],
                     callbacks: Iterable[Callback] = (), config: Mapping[str, Any] | None = None) -> Session:
    """Every model on the photo, a step each, counts as the one epoch; ``results``: each label's training summary."""
    session = Session(callbacks, name="detect-photo", config=config, steps_per_epoch=len(models))
    session.results["photo"] = photo
    image = to_tensor(photo.image)
    detections: dict[str, dict[str, Any]] = {}
    with session.running():
        session.fire("on_epoch_start", epoch=0)
        for i, (label, model) in enumerate(models.items()):
            out, ms = detect(model, image)
            row = detections[label] = {**people_counts(out["scores"]), "inference_ms": ms}
            session.step_end(i, {"label": label, "photo": photo, "output": out, **row})
        session.results["verdict"] = verdict(results, detections)
        session.epoch_end(0, {f"photo/{label.split(':')[0].replace(' ', '')}/{k}": v
                              for label, row in detections.items() for k, v in row.items()})
    return session


def verdict(results: Mapping[str, Mapping[str, Any]],
            detections: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and one row per trained model: train and held-out AP, people counted on the photo, s/iter."""
    columns = ["model", "train bbox AP", "held-out bbox AP", "held-out segm AP",
               *(f"people@{t}" for t in THRESHOLDS), "s/iter"]
    rows = [[label, summary.get("train/bbox_AP"), summary.get("val/bbox_AP"), summary.get("val/segm_AP"),
             *(detections.get(label, {}).get(f"people@{t}") for t in THRESHOLDS), summary.get("train/sec_per_iter")]
            for label, summary in results.items()]
    return columns, rows
