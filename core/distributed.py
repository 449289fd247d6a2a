"""torchrun's process group, DDP and shards; without torchrun a world of one whose collectives are no-ops."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


def _terminated(signum: int, frame: Any) -> None:
    # torchrun stops the other workers with SIGTERM when one fails: an exception runs their
    # exception paths (a W&B run finished as failed, files closed) instead of ending them on the spot.
    raise SystemExit(128 + signum)


@dataclass
class Dist:
    """This process's place in the job and its device; with ``world_size`` 1 collectives return their input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    _store: Any = field(default=None, repr=False)
    _previous_sigterm: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def all_reduce_sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each key summed over the ranks, in one collective. Every rank must pass the same keys."""
        if not self.distributed:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        # float64 so that sums of counts stay exact; NCCL reduces only tensors on the GPU.
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        torch_dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def all_reduce_mean(self, values: Mapping[str, float | tuple[float, float]]) -> dict[str, float]:
        """Means over the ranks: a number with equal weight per rank, a ``(sum, count)`` pair as the exact mean over
        the whole data (NaN for count 0). Every rank must pass the same keys in the same forms."""
        pairs = {k: v if isinstance(v, tuple) else (v, 1.0) for k, v in sorted(values.items())}
        totals = self.all_reduce_sum({**{f"{k}/sum": s for k, (s, _) in pairs.items()},
                                      **{f"{k}/count": n for k, (_, n) in pairs.items()}})
        return {k: totals[f"{k}/sum"] / totals[f"{k}/count"] if totals[f"{k}/count"] else math.nan for k in pairs}

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; keep it small)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def report_failure(self) -> bool:
        """Call once, from an exception handler: True for the job's first failure (show it), False for an echo of
        another rank's (stay quiet). An unreachable store means its host failed first."""
        if not self.distributed:
            return True
        try:
            # A restarted job (torchrun --max-restarts) starts a fresh count.
            key = f"dlhw/failures/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            return self._store.add(key, 1) == 1
        except (RuntimeError, OSError):
            return False

    def shutdown(self) -> None:
        if self.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self._store = None


def init_distributed(device: str | torch.device = "cpu") -> Dist:
    """This process's place in the torchrun job (NCCL on ``cuda:LOCAL_RANK``, else gloo), or a world of one."""
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, rank=rank, world_size=world)
    store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timedelta(seconds=10), wait_for_workers=False)
    previous = signal.signal(signal.SIGTERM, _terminated)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                _store=store, _previous_sigterm=previous)


def wrap_ddp(model: nn.Module, dist: Dist, **kwargs: Any) -> nn.Module:
    """``model`` in DistributedDataParallel, or itself in a world of one; train through this, save the unwrapped."""
    if not dist.distributed:
        return model
    if dist.device.type == "cuda":
        kwargs.setdefault("device_ids", [dist.device.index])
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def shard(indices: Sequence[int] | torch.Tensor, rank: int, world: int, *, even: bool = True) -> Any:
    """Rank ``rank``'s part of ``indices``, cut as ``DistributedSampler`` cuts: ``even`` (training) pads by
    wrapping round so every rank takes the same steps; otherwise the parts cover ``indices`` exactly once."""
    n = len(indices)
    total = math.ceil(n / world) * world if even else n
    positions = [p % n for p in range(rank, total, world)]
    if isinstance(indices, torch.Tensor):
        return indices[torch.tensor(positions, dtype=torch.long, device=indices.device)]
    return [indices[i] for i in positions]


class ShardedSampler(torch.utils.data.Sampler):
    """This rank's :func:`shard` of the epoch of another, identically seeded sampler; ``set_epoch`` is passed on."""

    def __init__(self, sampler: torch.utils.data.Sampler, rank: int, world: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.world)

    def __iter__(self) -> Iterator[int]:
        # Lazily, so a loader stopped early draws no more of a random sampler than one process would.
        head, n = [], 0
        for n, index in enumerate(self.sampler, 1):
            if len(head) < self.world:
                head.append(index)
            if (n - 1) % self.world == self.rank:
                yield index
        for position in range(n, math.ceil(n / self.world) * self.world):  # the padding, wrapped round
            if position % self.world == self.rank:
                yield head[position % n]
