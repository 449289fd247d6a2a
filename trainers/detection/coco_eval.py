"""COCO metrics with pycocotools as ``references/detection`` computes them; under torchrun, of every rank's records."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dlhw.core.distributed import Dist

# COCOeval.stats positions of the numbers we log.
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 8}


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float().cpu()
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


def _rle(masks: np.ndarray) -> list[dict]:
    # (N, H, W) binary masks -> COCO run-length encodings with JSON-friendly counts
    rles = mask_util.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    return [{**r, "counts": r["counts"].decode("ascii")} for r in rles]


def coco_ground_truth(targets: Sequence[Mapping[str, torch.Tensor]], sizes: Sequence[tuple[int, int]],
                      class_names: Mapping[int, str] | None = None) -> COCO:
    """A pycocotools COCO object from torchvision-format targets and (H, W) sizes (no labels: class 1)."""
    images, annotations, classes = [], [], set()
    for t, (h, w) in zip(targets, sizes):
        image_id = int(t["image_id"])
        images.append({"id": image_id, "height": h, "width": w})
        boxes = _xywh(t["boxes"])
        segm = _rle(t["masks"].cpu().numpy()) if "masks" in t and len(boxes) else [None] * len(boxes)
        areas = t["area"].tolist() if "area" in t else [bw * bh for _, _, bw, bh in boxes]
        labels = t["labels"].tolist() if "labels" in t else [1] * len(boxes)
        classes.update(int(c) for c in labels)
        for box, rle, area, label in zip(boxes, segm, areas, labels):
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label), "bbox": box,
                   "area": area, "iscrowd": 0}
            if rle is not None:
                ann["segmentation"] = rle
            annotations.append(ann)
    names = dict(class_names or {1: "person"})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": names.get(c, str(c))} for c in sorted(classes | set(names))]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_detections(outputs: Mapping[int, Mapping[str, torch.Tensor]], iou_type: str) -> list[dict]:
    """Model outputs keyed by image id -> COCO result records (masks thresholded at 0.5)."""
    results = []
    for image_id, out in outputs.items():
        scores, labels = out["scores"].tolist(), out["labels"].tolist()
        if iou_type == "bbox":
            key, geoms = "bbox", _xywh(out["boxes"])
        else:
            key, geoms = "segmentation", _rle((out["masks"][:, 0] > 0.5).cpu().numpy()) if len(scores) else []
        results += [{"image_id": image_id, "category_id": int(c), key: g, "score": s}
                    for g, s, c in zip(geoms, scores, labels)]
    return results


def coco_metrics(gt: COCO, outputs: Mapping[int, Mapping[str, torch.Tensor]], iou_types: Sequence[str],
                 dist: Dist | None = None) -> dict[str, float]:
    """``{"bbox_AP": ..., "segm_AP": ...}``, 0.0 when nothing was detected; with ``dist``, a collective."""
    image_ids = sorted(outputs)
    records = {iou_type: coco_detections(outputs, iou_type) for iou_type in iou_types}
    if dist is not None and dist.distributed:
        parts = dist.all_gather_object((image_ids, records))
        image_ids = sorted(i for ids, _ in parts for i in ids)
        # Rank order keeps each image's detections in the order its model returned them.
        records = {t: [r for _, part in parts for r in part[t]] for t in iou_types}
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dets = records[iou_type]
        if not dets:  # pycocotools cannot load an empty result list; nothing detected scores zero
            metrics.update({f"{iou_type}_{k}": 0.0 for k in STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(gt, gt.loadRes(dets), iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # -1 marks "no ground truth at this size/setting"; report it as 0 rather than a negative AP.
        metrics.update({f"{iou_type}_{k}": max(0.0, float(evaluator.stats[i])) for k, i in STATS.items()})
    return metrics


def coco_ap(targets: Sequence[Mapping[str, torch.Tensor]], outputs: Sequence[Mapping[str, torch.Tensor]], *,
            iou_types: Sequence[str] = ("bbox",), sizes: Sequence[tuple[int, int]] | None = None,
            class_names: Mapping[int, str] | None = None) -> dict[str, float]:
    """COCO AP from any loop: ``targets`` and ``outputs`` are parallel lists in torchvision's detection format;
    ``sizes`` (H, W) are needed for "segm" only when targets have no masks."""
    targets = [{**t, "image_id": t.get("image_id", torch.tensor(i))} for i, t in enumerate(targets)]
    if sizes is None:
        sizes = [tuple(t["masks"].shape[-2:]) if "masks" in t else (0, 0) for t in targets]
    gt = coco_ground_truth(targets, sizes, class_names)
    by_id = {int(t["image_id"]): {k: v.detach().cpu() for k, v in out.items()} for t, out in zip(targets, outputs)}
    return coco_metrics(gt, by_id, iou_types)
