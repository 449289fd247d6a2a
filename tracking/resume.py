"""Continuing a training command: the checkpoint ``--resume`` means (read and checked), what W&B has, the next line."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from wandb import env as wandb_env

from dlhw.callbacks.checkpoint import FINISHED, LAST
from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.core.errors import UsageError
from dlhw.core.events import EPOCH_AXIS, STEP_AXIS, Stopped, is_rank_zero
from dlhw.core.files import plain
from dlhw.tracking.readback import history
from dlhw.trainers.engine import CHECKPOINT_FORMAT, Engine


@dataclass
class Resume:
    path: Path
    state: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        return (self.state["callbacks"].get("WandbLogger") or {}).get("run_id")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The resumable checkpoint at ``path``; a UsageError for a missing, cut, foreign or newer file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass the last.pt of an earlier run, or --resume auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a cut or foreign file
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"checkpoint {path} cannot be read ({reason}): it is truncated or not a checkpoint; "
                         f"delete it to resume from an earlier one, or start afresh without --resume") from None
    if not isinstance(state, dict) or not {"format", "name", "trainer", "rng"} <= state.keys():
        raise UsageError(f"{path} is not a resumable checkpoint (best.pt holds weights only); "
                         f"resume from the last.pt beside it")
    if not isinstance(state["format"], int) or state["format"] > CHECKPOINT_FORMAT:
        raise UsageError(f"checkpoint {path} has format {state['format']}, newer than this program's "
                         f"{CHECKPOINT_FORMAT}; resume it with the version that wrote it, or upgrade")
    return state


def check_resumable(state: Mapping[str, Any], path: str | Path, *, name: str, config: Mapping[str, Any],
                    may_differ: Iterable[str] = ("epochs",)) -> None:
    """A UsageError for another experiment's checkpoint, a changed setting outside ``may_differ``, or too few epochs."""
    if state["name"] != name:
        raise UsageError(f"checkpoint {path} is from a {state['name']} run, not {name}; "
                         f"pass a checkpoint of this command, or start afresh without --resume")
    saved, now = state["config"], plain(dict(config))
    # A job's data shards and per-process batch depend on how many processes share it.
    if "world_size" in now and saved.get("world_size", 1) != now["world_size"]:
        raise UsageError(f"checkpoint {path} was written by a job of {saved.get('world_size', 1)} process(es), this "
                         f"one has {now['world_size']}; resume it with as many (torchrun --nproc_per_node), "
                         f"or start afresh without --resume")
    allowed = set(may_differ) | {"world_size"}
    changed = [f"{k}={saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
               if k not in allowed and not k.startswith("_") and saved.get(k) != now.get(k)]
    if changed:
        raise UsageError(f"checkpoint {path} was trained with other settings ({'; '.join(changed)}); resume with "
                         f"its settings (only {', '.join(sorted(allowed))} may change), or start afresh without --resume")
    needed = state["epoch"] + (1 if state["batch"] else 0)
    if "epochs" in now and now["epochs"] < needed:
        raise UsageError(f"checkpoint {path} is {state['epoch']} epochs and {state['batch']} steps into its run; "
                         f"--epochs {now['epochs']} is too few to resume it (at least {needed})")


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
