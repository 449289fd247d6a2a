"""The distributed building blocks with two real processes: torchrun, gloo, tiny data.

One torchrun job (tests/distributed/worker.py) runs every block on both ranks, then fails on one
rank; each test compares what the ranks saw with one process's computation over all the data, made
here with the same code, or what the failure showed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlhw.core.distributed import Dist
from tests.conftest import ROOT
from tests.distributed import worker
from dlhw.trainers.detection.coco_eval import coco_ground_truth, coco_metrics
from dlhw.trainers.detection.trainer import EpochSlices

pytestmark = pytest.mark.slow  # real multi-process runs: CI runs them, -m "not slow" leaves them out

WORKER = str(ROOT / "tests" / "distributed" / "worker.py")
# What the job is allowed for two processes to start, compute, fail and be cleaned up on a busy machine:
# a hang would last until the collective's timeout (30 minutes for gloo), so it ends the test with TimeoutExpired.
BOUND_S = 240


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``torchrun --standalone --nproc_per_node 2 worker.py OUT``, with the checkout importable: the job and OUT."""
    out = tmp_path_factory.mktemp("ranks")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, str(out)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=BOUND_S)
    return proc, out


@pytest.fixture(scope="module")
def ranks(job) -> list[dict]:
    proc, out = job
    assert all((out / f"rank{r}.json").is_file() for r in (0, 1)), proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def interleave(a: list, b: list) -> list:
    """Undo a two-way shard: rank 0 holds positions 0, 2, 4, ... and rank 1 positions 1, 3, 5, ..."""
    return [x for pair in zip(a, b) for x in pair] + a[len(b):]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_each_rank_knows_its_place(ranks):
    assert [r["identity"] for r in ranks] == [
        {"rank": r, "world": 2, "local_rank": r, "is_main": r == 0, "device": "cpu", "backend": "gloo"} for r in (0, 1)]


def test_device_batches_give_each_rank_a_disjoint_half_of_every_epoch(ranks):
    one = worker.batches(Dist(), batch_size=3, shuffle=True, augment=True)
    n = worker.N_IMAGES
    for epoch in range(worker.EPOCHS):
        parts = [flat(r["train"][epoch]) for r in ranks]
        assert [len(p) for p in parts] == [6, 6]  # ceil(11 / 2) each: equal steps on both ranks
        order = interleave(*parts)
        # Together: the single process's order of this epoch, padded by wrapping round to 12.
        single = flat([y.tolist() for _, y in one])
        assert order[:n] == single and order[n:] == single[:1]
        assert sorted(single) == list(range(n))
    assert ranks[0]["train"][0] != ranks[0]["train"][1]  # a new order each epoch
    assert [r["train_len"] for r in ranks] == [2, 2]


def test_evaluation_batches_cover_the_split_once(ranks):
    parts = [flat(r["eval"]) for r in ranks]
    assert sorted(parts[0] + parts[1]) == list(range(worker.N_IMAGES))
    assert not set(parts[0]) & set(parts[1])
    assert [r["eval_len"] for r in ranks] == [2, 2]


def test_the_sharded_sampler_splits_each_epoch_of_the_wrapped_sampler(ranks):
    inner = EpochSlices(7, 5, seed=3)
    for epoch in range(worker.EPOCHS):
        inner.set_epoch(epoch)
        expected = list(inner)
        assert interleave(*(r["sampler"][epoch] for r in ranks)) == expected + expected[:1]
    assert [r["sampler_len"] for r in ranks] == [3, 3]


def test_all_reduced_metrics_equal_the_single_process_computation(ranks):
    n = worker.N_IMAGES
    correct = sum(i % 3 != 0 for i in range(n))
    for r in ranks:
        assert r["mean"] == {"acc": correct / n, "rank": 0.5}
        assert r["sum"] == {"images": n, "correct": correct}
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]


def test_gathered_coco_evaluation_equals_one_process_on_the_same_predictions(ranks):
    targets, sizes, outputs = worker.detections()
    single = coco_metrics(coco_ground_truth(targets, sizes), outputs, ("bbox", "segm"))
    assert 0 < single["bbox_AP"] < 1 and 0 < single["segm_AP"] < 1  # neither trivial nor perfect
    assert sorted(ranks[0]["coco_ids"] + ranks[1]["coco_ids"]) == sorted(outputs)
    for r in ranks:
        assert r["coco"] == single


def test_two_ddp_processes_train_like_one_with_the_same_global_batch(ranks):
    # Rank r's k-th batch of 2 holds positions 4k + r and 4k + 2 + r of the epoch's order, so the
    # two ranks' batches together are the single process's k-th batch of 4, and DDP averages the
    # two mean-loss gradients into that batch's gradient. Only float rounding may differ.
    single = torch.tensor(worker.train(Dist(), batch_size=4))
    for r in ranks:
        assert torch.allclose(torch.tensor(r["weights"]), single, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.tensor(worker.train(Dist(), batch_size=2)), single, atol=1e-3)


def test_when_one_rank_raises_while_the_other_computes_the_job_stops_and_shows_the_error_once(job):
    proc, folder = job
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("ValueError: rank 1 cannot go on") == 1, out
    assert "Connection closed by peer" not in out  # rank 0's echo of the failure stays quiet
    # torchrun stopped rank 0 with SIGTERM; its exception path still ran.
    assert (folder / "rank0.stopped").read_text() == "exception path ran"
