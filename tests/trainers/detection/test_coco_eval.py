"""pycocotools evaluation on hand-made ground truth: perfect, shifted and empty predictions."""

from __future__ import annotations

import numpy as np
import torch

from dlhw.trainers.detection.coco_eval import coco_ap, coco_ground_truth, coco_metrics
from dlhw.trainers.detection.dataset import make_target


def _scene():
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 5:50, 10:25] = 1
    masks[1, 10:55, 40:60] = 1
    return make_target(masks, 7)


def test_perfect_shifted_and_empty_predictions():
    target = _scene()
    gt = coco_ground_truth([target], [(60, 80)])
    perfect = {7: {"boxes": target["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1]),
                   "masks": target["masks"][:, None].float()}}
    m = coco_metrics(gt, perfect, ("bbox", "segm"))
    assert m["bbox_AP"] > 0.99 and m["segm_AP"] > 0.99 and m["bbox_AR100"] > 0.99
    shifted = {7: {**perfect[7], "boxes": target["boxes"] + torch.tensor([2.0, 0.0, 2.0, 0.0])}}
    s = coco_metrics(gt, shifted, ("bbox",))
    assert 0 < s["bbox_AP"] < m["bbox_AP"] and s["bbox_AP50"] >= s["bbox_AP75"]
    empty = {7: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                 "masks": torch.zeros(0, 1, 60, 80)}}
    assert coco_metrics(gt, empty, ("bbox", "segm")) == {f"{t}_{k}": 0.0 for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "AR100")}


def test_coco_ap_alone_from_two_classes_in_torchvision_format():
    # Two images, two classes, no image ids or areas: what a user's own detection loop holds.
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 70.0, 50.0]]), "labels": torch.tensor([1, 2])}]
    right = [{**t, "scores": torch.ones(len(t["boxes"]))} for t in targets]
    assert coco_ap(targets, right)["bbox_AP"] > 0.99
    # The second image's class-2 box called class 1: class 2 is missed and class 1 has a false positive.
    wrong = [right[0], {**right[1], "labels": torch.tensor([1, 1])}]
    assert coco_ap(targets, wrong, class_names={1: "cat", 2: "dog"})["bbox_AP"] < 0.7
