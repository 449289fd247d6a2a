"""Plug-ins: panels and probes for any loop, their adapters (suite, Lightning), W&B logging, progress, checkpoints."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dlhw.core.events import Callback

DEFAULT_PROJECT = "dlhw"  # when neither --project nor WANDB_PROJECT names one


def standard_callbacks(args: argparse.Namespace, *, job_type: str, monitor: tuple[str, str] | None = None,
                       tags: Sequence[str] = (), log_every: int = 10) -> list[Callback]:
    """The W&B logger, progress bar and summary table from the global flags; ``log_every``: the flag's default."""
    from dlhw.callbacks.progress import ProgressBar, SummaryTable

    cbs: list[Callback] = []
    if args.wandb_mode != "disabled":
        from dlhw.callbacks.wandb_logger import WandbLogger

        cbs.append(WandbLogger(project=args.project, entity=getattr(args, "entity", None), mode=args.wandb_mode,
                               out_dir=getattr(args, "wandb_dir", args.out), name=getattr(args, "run_name", None),
                               group=getattr(args, "group", None), job_type=job_type, tags=tags, monitor=monitor,
                               log_every=getattr(args, "log_every", None) or log_every))
    return [*cbs, ProgressBar(), SummaryTable()]
