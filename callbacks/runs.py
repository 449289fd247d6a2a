"""Starting W&B runs so that nothing ever waits on a login prompt or a network that isn't there."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb
from wandb import env as wandb_env

from dlhw.callbacks import DEFAULT_PROJECT

# Online runs give up on an unreachable server after this long and fall back to offline.
ONLINE_INIT_TIMEOUT_S = 30


def init_run(
    *,
    project: str | None,
    mode: str,
    out_dir: str | Path,
    config: Mapping[str, Any],
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: Sequence[str] = (),
    entity: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
) -> Any:
    """Start a run under ``out_dir/wandb``; an online start that fails is retried offline, said in one line.

    Arguments given here are the user's explicit choices and win. ``job_type`` and ``tags`` are the
    suite's defaults, so W&B's own ``WANDB_JOB_TYPE`` and ``WANDB_TAGS`` replace them; a project,
    entity, group or name left None is W&B's to fill from ``WANDB_PROJECT`` (else ``dlhw``),
    ``WANDB_ENTITY``, ``WANDB_RUN_GROUP`` and ``WANDB_NAME``.

    ``run_id`` names the run (None: W&B's ``WANDB_RUN_ID``, else a new id); with ``resume`` the run
    continues: ``resume="must"`` online, where the server holds it, ``"allow"`` offline, where the
    earlier part may only be local.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # W&B stages table, image and checkpoint files for upload in its data dir and caches artifacts;
    # both default to the home folder. Keep them under --out, so one folder holds everything a
    # command wrote and `wandb sync` still finds the staged files later. A user's own setting wins.
    os.environ.setdefault("WANDB_DATA_DIR", str(out_dir / "wandb-data"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(out_dir / "wandb-cache"))
    kwargs: dict[str, Any] = dict(
        project=project or os.environ.get(wandb_env.PROJECT) or DEFAULT_PROJECT,
        entity=entity,
        dir=str(out_dir),
        config=dict(config),
        name=name,
        group=group,
        job_type=os.environ.get(wandb_env.JOB_TYPE) or job_type,
        tags=None if os.environ.get(wandb_env.TAGS) else list(tags) or None,
        reinit="finish_previous",
        id=run_id,
    )
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S),
                              resume="must" if resume else None, **kwargs)
        except Exception as exc:  # wandb raises several types for "no server"; all mean: go offline.
            print(
                f"W&B online start failed ({type(exc).__name__}: {exc}); logging offline instead, "
                f"upload later with `wandb sync {out_dir / 'wandb'}`",
                file=sys.stderr,
            )
    return wandb.init(mode=mode if mode != "online" else "offline", resume="allow" if resume else None, **kwargs)
