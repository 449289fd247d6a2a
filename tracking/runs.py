"""Starting W&B runs so that nothing ever waits on a login prompt or a network that isn't there."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb

# Online runs give up on an unreachable server after this long and fall back to offline.
ONLINE_INIT_TIMEOUT_S = 30


def init_run(
    *,
    project: str,
    mode: str,
    out_dir: str | Path,
    config: Mapping[str, Any],
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: Sequence[str] = (),
) -> Any:
    """Start a run under ``out_dir/wandb``; an online start that fails is retried offline, said in one line."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # W&B stages table, image and checkpoint files for upload in its data dir and caches artifacts;
    # both default to the home folder. Keep them under --out, so one folder holds everything a
    # command wrote and `wandb sync` still finds the staged files later. A user's own setting wins.
    os.environ.setdefault("WANDB_DATA_DIR", str(out_dir / "wandb-data"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(out_dir / "wandb-cache"))
    kwargs: dict[str, Any] = dict(
        project=project,
        dir=str(out_dir),
        config=dict(config),
        name=name,
        group=group,
        job_type=job_type,
        tags=list(tags) or None,
        reinit="finish_previous",
    )
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S), **kwargs)
        except Exception as exc:  # wandb raises several types for "no server"; all mean: go offline.
            print(
                f"W&B online start failed ({type(exc).__name__}: {exc}); logging offline instead, "
                f"upload later with `wandb sync {out_dir / 'wandb'}`",
                file=sys.stderr,
            )
    return wandb.init(mode=mode if mode != "online" else "offline", **kwargs)
