"""``launch.py`` with test-only hooks, for the torchrun tests: ``python launcher.py ARGS`` runs
``launch.main(ARGS)`` after reading these variables:

- ``DLHW_TEST_RECORD=DIR``: each rank appends the image indices of every training epoch's shard
  (what ``trainers.device_data`` cuts for it) to ``DIR/rank<R>.jsonl``, one line per epoch, and
  writes the seed of its global torch generator to ``DIR/rank<R>.seed``, and its command line and
  the sweep parameters ``wandb agent`` gave it (``WANDB_SWEEP_PARAM_PATH``) to ``DIR/rank<R>.argv.json``.
- ``DLHW_TEST_STEPS=DIR``: each rank appends the global step, the step's loss and a digest of its
  torch random state after every training step to ``DIR/rank<R>.steps.jsonl``.
- ``DLHW_TEST_FAIL=RANK:STEP``: that rank raises ``ValueError`` after training step STEP.
- ``DLHW_TEST_SIGTERM=RANK:STEP``: that rank sends itself SIGTERM after training step STEP (a
  stop that only one rank hears).
- ``DLHW_TEST_NO_DROPOUT=1``: the model's dropout off, so that one process and two take the same
  steps up to rounding (their dropout masks differ otherwise).

The hooks wrap the trainer builder that ``launch.py`` calls for the command (:func:`install`): an
``alexnet`` rank never imports the detection trainer. The training itself is untouched. The tests
start the job with :func:`torchrun`.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from torch import nn

import launch
from dlhw.core.events import Callback

RANK = int(os.environ.get("RANK", "0"))
ROOT = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    """This environment with the checkout importable and without ``WANDB_SERVICE``: the job starts its own W&B
    service, as from a shell (one inherited from the test's process would outlive the job)."""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "PYTHONPATH": str(ROOT), **extra}


def torchrun(args: list[str], *, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 launcher.py ARGS`` with ``env`` added to :func:`environment`."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, *args], env=environment(**env), capture_output=True, text=True, timeout=timeout)


def _at(variable: str) -> int | None:
    """The step of ``RANK:STEP`` in ``variable`` when RANK is this process's rank, else None."""
    rank, _, step = os.environ.get(variable, "").partition(":")
    return int(step) if rank and int(rank) == RANK else None


class Hooks(Callback):
    def __init__(self) -> None:
        self.fail, self.sigterm = _at("DLHW_TEST_FAIL"), _at("DLHW_TEST_SIGTERM")
        self.steps = os.environ.get("DLHW_TEST_STEPS")

    def on_batch_end(self, trainer, batch_idx, outputs) -> None:
        if self.steps:
            rng = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
            with (Path(self.steps) / f"rank{RANK}.steps.jsonl").open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "loss": float(outputs["loss"]), "rng": rng}) + "\n")
        if trainer.global_step == self.fail:
            raise ValueError(f"injected failure on rank {RANK} at step {self.fail}")
        if trainer.global_step == self.sigterm:
            os.kill(os.getpid(), signal.SIGTERM)


def with_hooks(build):
    def build_with_hooks(*args, **kwargs):
        trainer = build(*args, **kwargs)
        if os.environ.get("DLHW_TEST_RECORD"):
            (Path(os.environ["DLHW_TEST_RECORD"]) / f"rank{RANK}.seed").write_text(str(torch.initial_seed()))
        trainer.callbacks.append(Hooks())
        if os.environ.get("DLHW_TEST_NO_DROPOUT"):
            for module in trainer.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        return trainer
    return build_with_hooks


def _recording(shard):
    record = Path(os.environ["DLHW_TEST_RECORD"]) / f"rank{RANK}.jsonl"

    def recording_shard(indices, rank, world, *, even=True):
        part = shard(indices, rank, world, even=even)
        if even:  # training: shuffled and padded to equal parts
            with record.open("a") as f:
                f.write(json.dumps(part.tolist()) + "\n")
        return part
    return recording_shard


def install(argv: list[str]) -> None:
    """The hooks around the builder of ``launch.py ARGV``'s command (``detect`` or ``alexnet``)."""
    trainer = importlib.import_module("dlhw.trainers.detection.trainer" if argv[0] == "detect" else
                                      "dlhw.trainers.classification")
    trainer.build_trainer = with_hooks(trainer.build_trainer)
    if record := os.environ.get("DLHW_TEST_RECORD"):
        import dlhw.trainers.device_data

        dlhw.trainers.device_data.shard = _recording(dlhw.trainers.device_data.shard)
        params = yaml.safe_load(Path(os.environ.get("WANDB_SWEEP_PARAM_PATH", os.devnull)).read_text()) or {}
        seen = {"argv": argv, "param_file": {k: v["value"] for k, v in params.items() if isinstance(v, dict)}}
        (Path(record) / f"rank{RANK}.argv.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    gc.disable()  # as launch.py starts
    install(sys.argv[1:])
    code = launch.main(sys.argv[1:])
    gc.freeze()  # as launch.py ends
    sys.exit(code)
