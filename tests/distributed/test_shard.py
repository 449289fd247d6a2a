"""Shards and a world of one, in this process (no process group needed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from dlhw.core.distributed import Dist, ShardedSampler, init_distributed, shard, wrap_ddp


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 12])
def test_even_shards_are_distributed_samplers_cut(n, world):
    for rank in range(world):
        reference = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
        assert shard(list(range(n)), rank, world) == reference
        assert shard(torch.arange(n) * 10, rank, world).tolist() == [10 * i for i in reference]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 12])
def test_uneven_shards_cover_the_indices_exactly_once(n, world):
    parts = [shard(list(range(n)), rank, world, even=False) for rank in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_sharded_sampler_passes_epochs_on():
    class Epochs(torch.utils.data.Sampler):
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 5

        def __iter__(self):
            return iter(range(10 * self.epoch, 10 * self.epoch + 5))

    sampler = ShardedSampler(Epochs(), rank=1, world=2)
    sampler.set_epoch(3)
    assert list(sampler) == [31, 33, 30] and len(sampler) == 3


def test_without_torchrun_the_world_is_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    dist = init_distributed("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.distributed, dist.backend) == (0, 1, True, False, None)
    assert not torch.distributed.is_initialized()
    assert dist.all_reduce_mean({"acc": (3, 4), "loss": 0.5, "none": (0.0, 0)})["acc"] == 0.75
    assert math.isnan(dist.all_reduce_mean({"none": (0.0, 0)})["none"])
    assert dist.all_reduce_sum({"n": 3}) == {"n": 3.0}
    assert dist.all_gather_object("x") == ["x"]
    assert dist.report_failure()
    model = nn.Linear(2, 1)
    assert wrap_ddp(model, dist) is model
    dist.barrier()
    dist.shutdown()


def test_a_world_of_one_under_torchrun_needs_no_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert Dist() == init_distributed("cpu")


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 5, 12])
def test_the_sharded_sampler_yields_shard_of_the_wrapped_epoch(n, world):
    for rank in range(world):
        assert list(ShardedSampler(list(range(100, 100 + n)), rank, world)) == shard(list(range(100, 100 + n)), rank, world)


def test_data_loader_shards_stopped_early_keep_a_single_process_stream():
    # The DataLoader path of `alexnet --device-data off` under two processes: rank 0's and rank 1's
    # batches of 8, interleaved, are one process's batches of 16 in every epoch, also when each
    # epoch stops after 2 batches (--limit-batches), where drawing a whole epoch ahead would shift
    # the next epoch's order.
    from dlhw.trainers.datasets import load, make_loaders

    splits = load("digits", "data")
    one = make_loaders(splits, size=32, batch_size=16, augment=False, seed=3).train
    ranks = [make_loaders(splits, size=32, batch_size=8, augment=False, seed=3, rank=r, world=2).train for r in (0, 1)]
    for _ in range(3):
        single = [y.tolist() for _, (_, y) in zip(range(2), one)]
        parts = [[y.tolist() for _, (_, y) in zip(range(2), loader)] for loader in ranks]
        for k in range(2):
            assert [i for pair in zip(parts[0][k], parts[1][k]) for i in pair] == single[k]
