"""Every registered backbone and both option 1 models build from random init and run at tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.detection.models import MODELS, backbone_names, build_detector, create_backbone
from trainers.errors import UsageError

TINY = {"min_size": 64, "max_size": 96}
# Two timm backbones stand for "any timm model": several levels through an FPN, and one map without.
TIMM = [("timm/resnet18", 3), ("timm/mobilenetv3_small_100", 1)]


def _forward(built):
    model = built.model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])[0]
    assert set(out) >= {"boxes", "scores", "labels"} and out["boxes"].shape[1] == 4
    return out


@pytest.mark.parametrize("name", backbone_names())
def test_registered_backbones_build_and_run(name):
    built = build_detector(2, model="", backbone=name, weights="none", **TINY)
    assert built.weights == "random"
    _forward(built)


@pytest.mark.parametrize(("name", "levels"), TIMM)
def test_timm_backbones_with_and_without_fpn(name, levels):
    bb = create_backbone(name, weights="none", levels=levels)
    assert len(bb.featmap_names) == levels and len(bb.anchor_sizes) == (levels + 1 if levels > 1 else 1)
    _forward(build_detector(2, model="", backbone=name, weights="none", levels=levels, **TINY))


@pytest.mark.parametrize("name", MODELS.names())
def test_option1_models_build_and_run(name):
    out = _forward(build_detector(1, model=name, backbone="", weights="none", **TINY))
    assert ("masks" in out) == name.startswith("mask")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UsageError, match="did you mean mobilenet_v2"):
        create_backbone("mobilenet_v22", weights="none")
    with pytest.raises(UsageError, match="unknown model 'maskrcnn_resnet50'.*did you mean maskrcnn_resnet50_fpn"):
        build_detector(1, model="maskrcnn_resnet50", backbone="", weights="none")


def test_backbone_sweep_trials_parse_and_name_known_backbones(tmp_path):
    import itertools

    import yaml

    from launch import get_args_parser
    from tracking.agent_command import trial_command
    from trainers.detection.models import check_backbone

    sweep = yaml.safe_load((Path(__file__).resolve().parents[3] / "sweeps" / "backbones.yaml").read_text())
    grid = sweep["parameters"]
    for backbone, lr in itertools.product(grid["backbone"]["values"], grid["lr"]["values"]):
        argv = trial_command(sweep["command"], program=sweep["program"], args_json_file=tmp_path / "a.json",
                             params={"backbone": {"value": backbone}, "lr": {"value": lr}})
        args = get_args_parser().parse_args(argv[argv.index("launch.py") + 1:])
        assert (args.command, args.option, args.skip_photo, args.backbone, args.lr) == ("detect", "2", True, backbone, lr)
        check_backbone(args.backbone)
