"""Every registered backbone and both option 1 models build from random init and run at tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlhw.core.errors import UsageError
from dlhw.trainers.detection.models import (BACKBONES, MODELS, Built, _new_heads, build_detector, fetch_weights,
                                       load_weights)

TINY = {"min_size": 64, "max_size": 96}
# Two timm backbones stand for "any timm model": several levels through an FPN, and one map without.
TIMM = [("timm/resnet18", 3), ("timm/mobilenetv3_small_100", 1)]


def _forward(built):
    model = built.model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])[0]
    assert set(out) >= {"boxes", "scores", "labels"} and out["boxes"].shape[1] == 4
    return out


@pytest.mark.parametrize("name", BACKBONES.names())
def test_registered_backbones_build_and_run(name):
    built = build_detector(2, model="", backbone=name, weights="none", **TINY)
    assert built.weights == "random"
    _forward(built)


@pytest.mark.parametrize(("name", "levels"), TIMM)
def test_timm_backbones_with_and_without_fpn(name, levels):
    built = build_detector(2, model="", backbone=name, weights="none", levels=levels, **TINY)
    assert len(built.model.roi_heads.box_roi_pool.featmap_names) == levels
    assert len(built.model.rpn.anchor_generator.sizes) == (levels + 1 if levels > 1 else 1)
    _forward(built)


@pytest.mark.parametrize("name", MODELS.names())
def test_option1_models_build_and_run(name):
    out = _forward(build_detector(1, model=name, backbone="", weights="none", **TINY))
    assert ("masks" in out) == name.startswith("mask")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UsageError, match="did you mean mobilenet_v2"):
        build_detector(2, model="", backbone="mobilenet_v22", weights="none")
    with pytest.raises(UsageError, match="unknown model 'maskrcnn_resnet50'.*did you mean maskrcnn_resnet50_fpn"):
        build_detector(1, model="maskrcnn_resnet50", backbone="", weights="none")


def test_backbone_sweep_trials_parse_and_name_known_backbones(tmp_path):
    import itertools

    import yaml

    from launch import get_args_parser
    from dlhw.tracking.agent_command import trial_command
    from dlhw.trainers.detection.models import check_backbone

    sweep = yaml.safe_load((Path(__file__).resolve().parents[3] / "sweeps" / "backbones.yaml").read_text())
    grid = sweep["parameters"]
    for backbone, lr in itertools.product(grid["backbone"]["values"], grid["lr"]["values"]):
        argv = trial_command(sweep["command"], program=sweep["program"], args_json_file=tmp_path / "a.json",
                             params={"backbone": {"value": backbone}, "lr": {"value": lr}})
        args = get_args_parser().parse_args(argv[argv.index("launch.py") + 1:])
        assert (args.command, args.option, args.skip_photo, args.backbone, args.lr) == ("detect", "2", True, backbone, lr)
        check_backbone(args.backbone)


def test_option2_is_the_tutorials_mobilenet_v2_faster_rcnn():
    model = build_detector(2, model="", backbone="mobilenet_v2", weights="none").model
    assert model.backbone.out_channels == 1280
    # One feature map; anchors of 5 sizes x 3 ratios at every position.
    gen = model.rpn.anchor_generator
    assert gen.sizes == ((32, 64, 128, 256, 512),) and gen.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert gen.num_anchors_per_location() == [15]
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 64, 64))
    assert isinstance(features, torch.Tensor) and features.shape[1] == 1280  # FasterRCNN names it "0"
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["0"] and tuple(pool.output_size) == (7, 7) and pool.sampling_ratio == 2
    assert model.roi_heads.box_predictor.cls_score.out_features == 2


def test_option1_puts_new_two_class_predictors_on_coco_weights():
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    torch.manual_seed(7)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **TINY)
    coco = {k: v.clone() for k, v in model.state_dict().items()}
    _new_heads(model)
    heads = model.roi_heads
    assert isinstance(heads.box_predictor, FastRCNNPredictor) and isinstance(heads.mask_predictor, MaskRCNNPredictor)
    assert heads.box_predictor.cls_score.in_features == 1024 and heads.box_predictor.cls_score.out_features == 2
    assert heads.box_predictor.bbox_pred.out_features == 2 * 4
    assert heads.mask_predictor.conv5_mask.in_channels == 256 and heads.mask_predictor.conv5_mask.out_channels == 256
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 2
    # Everything but the two predictors keeps the COCO-shaped weights.
    state = model.state_dict()
    for key in ("backbone.body.conv1.weight", "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc7.weight",
                "roi_heads.mask_head.0.0.weight"):
        assert torch.equal(state[key], coco[key]), key
    _forward(Built(model, "coco"))


def _tiny_weights(cache: Path, prefix: str | None = None, obj=None) -> tuple[str, dict]:
    """A tiny state dict saved in torch.hub's cache under a torchvision-style name carrying the first
    8 hex digits of its sha256 (or ``prefix``); returns the URL it would come from and the state."""
    import hashlib

    state = obj if obj is not None else {"w": torch.arange(6.0).reshape(2, 3)}
    staged = cache / "staged.pth"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, staged)
    name = f"tiny-{prefix or hashlib.sha256(staged.read_bytes()).hexdigest()[:8]}.pth"
    staged.rename(cache / name)
    # Port 9 (discard) never answers: a re-download fails at once, without the network.
    return f"http://127.0.0.1:9/models/{name}", state


def _entry(url: str):
    from torchvision.models import Weights, WeightsEnum

    class TinyWeights(WeightsEnum):
        DEFAULT = Weights(url=url, transforms=None, meta={})

    return TinyWeights.DEFAULT


def test_cached_weights_matching_their_name_load_as_tensors_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, state = _tiny_weights(Path(torch.hub.get_dir()) / "checkpoints")
    entry = _entry(url)
    assert fetch_weights(entry) and capsys.readouterr().err == ""
    loaded = load_weights(entry.url)  # the verified file, tensors only
    assert torch.equal(loaded["w"], state["w"])


def test_weights_that_run_code_when_unpickled_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Any class outside torch's allow-list is what weights_only refuses; a plain state dict never holds one.
    url, _ = _tiny_weights(Path(torch.hub.get_dir()) / "checkpoints", obj={"w": torch.zeros(1), "x": UsageError("x")})
    assert fetch_weights(_entry(url))
    with pytest.raises(UsageError, match=r"cannot load pretrained weights .*tiny-.*\.pth as plain tensors"):
        load_weights(url)


def test_a_cached_file_whose_hash_does_not_match_its_name_is_removed_and_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    url, _ = _tiny_weights(cache, prefix="0badc0de")
    assert not fetch_weights(_entry(url))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"removed {cache / 'tiny-0badc0de.pth'}, whose sha256 does not start "
                                               "with 0badc0de") and err[0].endswith("starting from random init")
    assert list(cache.iterdir()) == []
