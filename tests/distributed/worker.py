"""What each rank runs under ``torchrun --nproc_per_node 2`` in tests/distributed.

``python worker.py OUT``: every building block on tiny data; each rank writes what it saw to
``OUT/rank<R>.json`` for the test to compare with one process's computation. Then rank 1 raises
while rank 0 computes outside a collective, and the error is handled as launch.py does, so the test
sees what a user sees. (Rank 1 raising while rank 0 waits in a collective is
tests/distributed/test_torchrun_alexnet.py's, with launch.py itself.)

The data and the training loop live here as functions so that the test computes the
single-process reference with exactly the same code.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlhw.core.distributed import Dist, ShardedSampler, init_distributed, shard, wrap_ddp
from dlhw.trainers.detection.coco_eval import coco_ground_truth, coco_metrics
from dlhw.trainers.detection.trainer import EpochSlices
from dlhw.trainers.device_data import DeviceBatches

N_IMAGES = 11  # odd, so the training shards need padding and the evaluation shards differ in length
TRAIN_IMAGES = 12  # a multiple of the global batch, so no rank pads and one process sees the same batches
EPOCHS = 3


def images(n: int = N_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 8x8 RGB images whose label is their index, so a batch's labels say which images it holds."""
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n)


def batches(dist: Dist, *, batch_size: int, shuffle: bool, augment: bool = False, n: int = N_IMAGES) -> DeviceBatches:
    """The device-resident batches of :func:`images` for this rank."""
    x, y = images(n)
    return DeviceBatches(x, y, size=8, mean=[0.5] * 3, std=[0.25] * 3, batch_size=batch_size, device="cpu",
                         augment=augment, shuffle=shuffle, seed=7, rank=dist.rank, world=dist.world_size)


def train(dist: Dist, batch_size: int) -> list[float]:
    """SGD on a linear regression from the images to their index for :data:`EPOCHS` epochs with
    ``batch_size`` images per process; returns the final weights."""
    torch.manual_seed(0)
    model = nn.Linear(3 * 8 * 8, 1)
    net = wrap_ddp(model, dist)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    data = batches(dist, batch_size=batch_size, shuffle=True, n=TRAIN_IMAGES)
    for _ in range(EPOCHS):
        for x, y in data:
            loss = nn.functional.mse_loss(net(x.flatten(1)).squeeze(1), y.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def detections(n_images: int = 6) -> tuple[list[dict], list[tuple[int, int]], dict[int, dict]]:
    """Ground-truth targets with masks, their sizes, and noisy scored predictions keyed by image id."""
    g = torch.Generator().manual_seed(3)
    targets, outputs = [], {}
    for i in range(n_images):
        k = 1 + i % 3
        xy = torch.randint(0, 30, (k, 2), generator=g).float()
        boxes = torch.cat([xy, xy + 8 + torch.randint(0, 20, (k, 2), generator=g)], 1)
        masks = torch.zeros(k, 64, 64, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"image_id": torch.tensor(i), "boxes": boxes, "labels": torch.ones(k, dtype=torch.int64),
                        "masks": masks})
        # Some boxes moved a little, one made up; masks as a detector returns them: (N, 1, H, W) probabilities.
        pred = torch.cat([boxes + torch.randn(k, 4, generator=g) * 2, torch.tensor([[40.0, 40.0, 60.0, 60.0]])])
        pred_masks = torch.zeros(k + 1, 1, 64, 64)
        for m, (x1, y1, x2, y2) in zip(pred_masks, pred.clamp(0, 64).int().tolist()):
            m[0, y1:y2, x1:x2] = 0.9
        outputs[i] = {"boxes": pred, "labels": torch.ones(k + 1, dtype=torch.int64),
                      "scores": torch.rand(k + 1, generator=g), "masks": pred_masks}
    return targets, [(64, 64)] * n_images, outputs


def blocks(dist: Dist) -> dict:
    """Everything one rank sees of the building blocks."""
    train_data = batches(dist, batch_size=3, shuffle=True, augment=True)
    seen = {"train": [[y.tolist() for _, y in train_data] for _ in range(EPOCHS)], "train_len": len(train_data)}
    evaluation = batches(dist, batch_size=3, shuffle=False)
    seen["eval"] = [y.tolist() for _, y in evaluation]
    seen["eval_len"] = len(evaluation)
    sampler = ShardedSampler(EpochSlices(7, 5, seed=3), dist.rank, dist.world_size)
    seen["sampler"] = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        seen["sampler"].append(list(sampler))
    seen["sampler_len"] = len(sampler)
    # This rank's part of a classification result over all images: label i is right when i % 3 != 0.
    mine = shard(list(range(N_IMAGES)), dist.rank, dist.world_size, even=False)
    correct = sum(i % 3 != 0 for i in mine)
    seen["mean"] = dist.all_reduce_mean({"acc": (correct, len(mine)), "rank": float(dist.rank)})
    seen["sum"] = dist.all_reduce_sum({"images": len(mine), "correct": correct})
    seen["gathered"] = dist.all_gather_object({"rank": dist.rank})
    targets, sizes, outputs = detections()
    ids = shard(sorted(outputs), dist.rank, dist.world_size, even=False)
    seen["coco_ids"] = ids
    seen["coco"] = coco_metrics(coco_ground_truth(targets, sizes), {i: outputs[i] for i in ids}, ("bbox", "segm"), dist)
    seen["weights"] = train(dist, batch_size=2)
    seen["identity"] = {"rank": dist.rank, "world": dist.world_size, "local_rank": dist.local_rank,
                        "is_main": dist.is_main, "device": str(dist.device), "backend": dist.backend}
    return seen


def failing(dist: Dist) -> None:
    """Rank 1 raises while rank 0 computes outside a collective."""
    dist.barrier()
    if dist.rank == 1:
        time.sleep(0.5)  # let rank 0 get where it is going
        raise ValueError("rank 1 cannot go on")
    time.sleep(120)  # torchrun stops this rank with SIGTERM long before


def main(out: Path) -> int:
    dist = init_distributed("cpu")
    try:
        (out / f"rank{dist.rank}.json").write_text(json.dumps(blocks(dist)))
        failing(dist)
        return 0
    except Exception:
        # As launch.py does: the first failure of the job is shown, its echoes on other ranks are not.
        if dist.report_failure():
            raise
        return 1
    except SystemExit:
        (out / f"rank{dist.rank}.stopped").write_text("exception path ran")
        raise
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
