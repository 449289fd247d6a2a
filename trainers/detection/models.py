"""The tutorial's detectors: option 1, a COCO R-CNN with new 2-class predictors; option 2, Faster R-CNN on a backbone.
Pretrained weights are checked against their name's sha256 prefix and unpickled with ``weights_only``."""

from __future__ import annotations

import pickle
import sys
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dlhw.core.errors import UsageError, suggest
from dlhw.core.registry import Registry
from dlhw.trainers.download import DownloadError, download, file_digest, socket_timeout

NUM_CLASSES = 2  # background and pedestrian
TIMM_PREFIX = "timm/"


@dataclass
class Built:
    model: nn.Module
    weights: str  # "coco", "imagenet" or "random"


def weights_file(url: str) -> Path:  # where torch.hub keeps it
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name


def fetch_weights(weights: Any) -> bool:
    """A weights entry in torch.hub's cache, with the sha256 prefix its name promises; False, said, if unavailable."""
    target = weights_file(weights.url)
    named = torch.hub.HASH_REGEX.search(target.name)  # resnet50-0676ba61.pth: sha256 starts with 0676ba61
    prefix = named.group(1) if named else None
    removed = ""
    if target.is_file():
        if prefix is None or file_digest(target).startswith(prefix):
            return True
        target.unlink()
        removed = f"removed {target}, whose sha256 does not start with {prefix} as its name says; "
    try:
        download(weights.url, target, sha256_prefix=prefix)
    except DownloadError as exc:
        print(f"{removed}pretrained weights unavailable ({exc}); starting from random init", file=sys.stderr)
        return False
    if removed:
        print(f"{removed}downloaded it again", file=sys.stderr)
    return True


def load_weights(url: str) -> dict[str, Any]:
    """The state dict of ``url``'s cached file, unpickled with ``weights_only`` (torchvision's builders do not)."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                  weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot load pretrained weights {weights_file(url)} as plain tensors ({type(exc).__name__}); "
                         f"delete the file, or pass --weights none") from None


def _pretrained(weights: Any, mode: str) -> Any:  # None: random init
    return weights if mode == "auto" and fetch_weights(weights) else None


MODELS: Registry[Built] = Registry("model")


def _new_heads(model: nn.Module) -> None:
    # The tutorial's surgery: 2-class box (and mask) predictors on a COCO model.
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, NUM_CLASSES)
    if model.roi_heads.has_mask():
        in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
        model.roi_heads.mask_predictor = MaskRCNNPredictor(in_channels, 256, NUM_CLASSES)


def _option1(name: str, head: type[nn.Module], *, weights: str = "auto", **kwargs: Any) -> Built:
    coco = _pretrained(torchvision.models.get_model_weights(name).DEFAULT, weights)
    if coco is None:
        return Built(torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                                  **kwargs), "random")
    # The builder's pretrained shape (frozen batch norms, the stem and layer1 fixed), weights loaded as tensors only.
    body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    model = head(body, num_classes=len(coco.meta["categories"]), **kwargs)
    model.load_state_dict(load_weights(coco.url))
    for m in model.modules():  # the COCO_V1 weights were trained with eps 0, as torchvision's builder sets
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = 0.0
    _new_heads(model)
    return Built(model, "coco")


for _name, _head in (("maskrcnn_resnet50_fpn", MaskRCNN), ("fasterrcnn_resnet50_fpn", FasterRCNN)):
    MODELS.register(_name)(partial(_option1, _name, _head))


@dataclass
class Backbone:
    """A feature extractor with ``out_channels`` and the anchors / RoI pooling that fit its maps."""

    body: nn.Module
    featmap_names: list[str]
    anchor_sizes: tuple[tuple[int, ...], ...]
    pretrained: bool


BACKBONES: Registry[Backbone] = Registry("backbone")
# One map at stride 32: the tutorial's anchors, five sizes at every position.
SINGLE_MAP_ANCHORS = ((32, 64, 128, 256, 512),)


def _features(name: str, out_channels: int, *, weights: str = "auto") -> Backbone:
    w = _pretrained(torchvision.models.get_model_weights(name).DEFAULT, weights)
    net = torchvision.models.get_model(name, weights=None)
    if w is not None:
        net.load_state_dict(load_weights(w.url))
    body = net.features
    body.out_channels = out_channels
    return Backbone(body, ["0"], SINGLE_MAP_ANCHORS, w is not None)


def _resnet_fpn(name: str, *, weights: str = "auto") -> Backbone:
    w = _pretrained(torchvision.models.get_model_weights(name).DEFAULT, weights)
    # Random init has nothing worth freezing; pretrained keeps the stem and layer1 fixed like the tutorial.
    body = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=3 if w else 5)
    if w is not None:  # the classifier's weights without its fc layer, which the FPN body drops
        body.body.load_state_dict({k: v for k, v in load_weights(w.url).items() if not k.startswith("fc.")})
    return Backbone(body, ["0", "1", "2", "3"], ((32,), (64,), (128,), (256,), (512,)), w is not None)


for _name, _channels in (("mobilenet_v2", 1280), ("mobilenet_v3_large", 960), ("efficientnet_b0", 1280),
                         ("convnext_tiny", 768)):
    BACKBONES.register(_name)(partial(_features, _name, _channels))
for _name in ("resnet18", "resnet50"):
    BACKBONES.register(_name)(partial(_resnet_fpn, _name))


class TimmFPN(nn.Module):
    """The last ``levels`` feature maps of a timm ``features_only`` model, through an FPN when there are several."""

    def __init__(self, body: nn.Module, levels: int) -> None:
        super().__init__()
        channels = body.feature_info.channels()
        if not 1 <= levels <= len(channels):
            raise UsageError(f"--levels must be between 1 and {len(channels)} for this backbone, got {levels}")
        self.body, self.levels = body, levels
        self.fpn = None if levels == 1 else FeaturePyramidNetwork(channels[-levels:], 256, LastLevelMaxPool())
        self.out_channels = channels[-1] if levels == 1 else 256

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)[-self.levels:]
        named = OrderedDict((str(i), m) for i, m in enumerate(maps))
        return self.fpn(named) if self.fpn is not None else named


def timm_backbone(name: str, *, weights: str = "auto", levels: int = 3) -> Backbone:
    """Any timm model as a backbone (``features_only``); ImageNet weights from the HF hub when reachable."""
    import timm

    body, pretrained = None, False
    if weights == "auto":
        try:
            with socket_timeout():
                body, pretrained = timm.create_model(name, pretrained=True, features_only=True), True
        except Exception as exc:  # hub errors come in many types; all mean "no weights"
            print(f"pretrained weights for timm {name} unavailable ({type(exc).__name__}); starting from random init",
                  file=sys.stderr)
    if body is None:
        body = timm.create_model(name, pretrained=False, features_only=True)
    module = TimmFPN(body, levels)
    # Several maps: one size per map, the max-pooled extra included.
    sizes = SINGLE_MAP_ANCHORS if levels == 1 else tuple((32 * 2**i,) for i in range(levels + 1))
    return Backbone(module, [str(i) for i in range(levels)], sizes, pretrained)


def check_backbone(name: str) -> None:
    """Raise UsageError with close matches unless ``name`` is a registered or a timm backbone."""
    import timm

    if name in BACKBONES or timm.is_model(name.removeprefix(TIMM_PREFIX)):
        return
    known = BACKBONES.names() + [TIMM_PREFIX + n for n in timm.list_models()]
    raise UsageError(f"unknown backbone {name!r}{suggest(name, known)}; choose one of {', '.join(BACKBONES.names())} "
                     f"or any timm model as timm/NAME (timm.list_models())")


def build_detector(option: int, *, model: str, backbone: str, weights: str, levels: int = 3, **kwargs: Any) -> Built:
    """Option 1 (``model``) or 2 (Faster R-CNN on ``backbone``: registered, or timm's as ``timm/NAME`` or NAME)."""
    if option == 1:
        return MODELS.create(model, weights=weights, **kwargs)
    check_backbone(backbone)
    bb = (BACKBONES.create(backbone, weights=weights) if backbone in BACKBONES else
          timm_backbone(backbone.removeprefix(TIMM_PREFIX), weights=weights, levels=levels))
    anchors = AnchorGenerator(sizes=bb.anchor_sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(bb.anchor_sizes))
    pool = MultiScaleRoIAlign(featmap_names=bb.featmap_names, output_size=7, sampling_ratio=2)
    detector = FasterRCNN(bb.body, num_classes=NUM_CLASSES, rpn_anchor_generator=anchors, box_roi_pool=pool, **kwargs)
    return Built(detector, "imagenet" if bb.pretrained else "random")
