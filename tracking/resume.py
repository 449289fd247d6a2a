"""Continuing a training command: the checkpoint ``--resume`` means, what W&B already has, the line to continue."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from wandb import env as wandb_env

from dlhw.callbacks.checkpoint import FINISHED, LAST
from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, is_rank_zero
from dlhw.core.session import Stopped
from dlhw.tracking.readback import history
from dlhw.trainers.engine import Engine, check_resumable, read_checkpoint


@dataclass
class Resume:
    path: Path
    state: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        return (self.state["callbacks"].get("WandbLogger") or {}).get("run_id")


def resolve_resume(value: str | None, out: str | Path, pattern: str) -> Resume | None:
    """``--resume PATH|auto``: auto is the newest unfinished checkpoint (of ``$WANDB_RUN_ID``'s run), else None."""
    if not value:
        return None
    if value == "auto":
        run_id = os.environ.get(wandb_env.RUN_ID)
        found = sorted((p for p in (Path(out) / "checkpoints").glob(pattern)
                        if p.name == LAST and not (p.parent / FINISHED).exists()), key=lambda p: p.stat().st_mtime)
        resume = next((r for r in (Resume(p, read_checkpoint(p)) for p in reversed(found))
                       if not run_id or r.run_id == run_id), None)
        if resume is None:
            if is_rank_zero():
                print(f"--resume auto: no unfinished checkpoint{f' of W&B run {run_id}' if run_id else ''} under "
                      f"{Path(out) / 'checkpoints'}; starting afresh", file=sys.stderr)
            return None
    else:
        resume = Resume(Path(value), read_checkpoint(value))
    if is_rank_zero():
        print(f"resuming from {resume.path}", file=sys.stderr)
    return resume


def option_checkpoints(directory: Path, resuming: bool) -> tuple[dict[str, Any] | None, Resume | None]:
    """One ``detect`` model's checkpoint in ``directory`` when ``resuming``, and its fit's summary if it ended."""
    last, finished = directory / LAST, directory / FINISHED
    earlier = Resume(last, read_checkpoint(last)) if resuming and last.exists() else None
    done = earlier is not None and finished.exists()
    return torch.load(finished, map_location="cpu", weights_only=True)["summary"] if done else None, earlier


def sent_before(wandb_dir: str | Path, run_id: str) -> dict[str, int]:
    """Per metric key, the last step or epoch that earlier processes of ``run_id`` logged, from its run folders."""
    sent: dict[str, int] = {}
    for run_dir in sorted((Path(wandb_dir) / "wandb").glob(f"*run-*-{run_id}")):
        try:
            items = history(run_dir)
        except RuntimeError as exc:  # an unreadable folder hides nothing we could do better without it
            print(f"warning: {exc}", file=sys.stderr)
            continue
        for item in items:
            axis = next((a for a in (STEP_AXIS, EPOCH_AXIS) if a in item), None)
            for key in (k for k in item if axis and k != axis and not k.startswith("_")):
                sent[key] = max(sent.get(key, 0), int(item[axis]))
    return sent


def fit_from(trainer: Engine, resume: Resume | None, wandb_dir: str | Path,
             may_differ: tuple[str, ...]) -> Mapping[str, Any]:
    """Fit ``trainer`` from ``resume`` (settings may differ in ``may_differ``), not logging again what its run has."""
    if resume is not None:
        check_resumable(resume.state, resume.path, name=trainer.name, config=trainer.config, may_differ=may_differ)
        trainer.load_checkpoint_state(resume.state)
    logger = trainer.find_callback(WandbLogger)
    run_id = os.environ.get(wandb_env.RUN_ID) or (resume.run_id if resume is not None else None)
    if logger is not None and run_id and is_rank_zero():  # only rank 0 logs
        logger.already_logged(sent_before(wandb_dir, run_id))
    try:
        return trainer.fit()
    except Stopped as stop:
        if stop.checkpoint:
            print(f"{stop}; continue with: {resume_command(stop.checkpoint)}", file=sys.stderr)
        raise


def resume_command(checkpoint: str | Path) -> str:
    """This process's command line (a torchrun line under torchrun) with ``--resume CHECKPOINT``."""
    argv = sys.argv[1:]
    kept = [a for i, a in enumerate(argv)
            if a != "--resume" and not a.startswith("--resume=") and (i == 0 or argv[i - 1] != "--resume")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        launcher = [Path(sys.executable).name]
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        launcher = ["torchrun", *(["--standalone"] if local == world else ["--nnodes", str(world // local)]),
                    "--nproc_per_node", str(local)]
    return shlex.join([*launcher, "launch.py", *kept, "--resume", str(checkpoint)])
