#!/usr/bin/env python
"""Command line of the suite: parse, build a config, hand it to a trainer with its callbacks."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlhw.callbacks import DEFAULT_PROJECT, standard_callbacks
from dlhw.core.errors import UsageError
from dlhw.core.events import Stopped, end_by_signal, is_rank_zero
from dlhw.tracking.cli import OUT_ENV, RESUME_ENV, AgentParser as Parser, resolve_mode


def global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The flags every subcommand shares, also after it (``wandb agent`` appends ``${args}`` there); ``suppress``: no
    defaults, which would overwrite values given earlier."""
    p = Parser(add_help=False, argument_default=argparse.SUPPRESS if suppress else None)
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = p.add_argument_group("global options")
    g.add_argument("--out", default=d(os.environ.get(OUT_ENV)),
                   help=f"folder for everything a command writes: W&B runs, checkpoints, logs (default: ${OUT_ENV} "
                        f"or ./runs; W&B runs go to $WANDB_DIR when it is set and neither is given)")
    g.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="W&B mode (default: online when an API key is configured, otherwise offline)")
    g.add_argument("--project", help=f"W&B project (default: $WANDB_PROJECT or {DEFAULT_PROJECT})")
    g.add_argument("--entity", help="W&B entity, a user or team (default: $WANDB_ENTITY or yours)")
    g.add_argument("--seed", type=int, default=d(0), help="random seed (default 0)")
    g.add_argument("--group", help="W&B group for this run (default: $WANDB_RUN_GROUP; sweeps set it per sweep)")
    g.add_argument("--run-name", help="W&B run name (default: $WANDB_NAME, else W&B picks one)")
    g.add_argument("--log-every", type=int, metavar="N", help="send per-step metrics to W&B every N steps "
                   "(default: 1 for slow steps such as detection, 10 for fast ones; epoch metrics always)")
    return p


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_locations(args: argparse.Namespace) -> None:
    """``--out`` (else ``./runs``) and W&B's folder, checked first: an unwritable one is a usage error, not a crash."""
    args.wandb_dir = args.out or os.environ.get("WANDB_DIR") or "runs"
    args.out = args.out or "runs"
    for flag, path in {"--out": Path(args.out), "$WANDB_DIR": Path(args.wandb_dir)}.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError as exc:
            blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file" if blocker is not None else exc.strerror or type(exc).__name__
            raise UsageError(f"cannot write to {flag} {path} ({why}); pass {flag} a folder you can write to") from None


def cmd_filters(args: argparse.Namespace) -> int:
    from dlhw.callbacks.experiments import FilterTables
    from dlhw.trainers.filters import filters_settings, images_from_args, run_filters

    settings = filters_settings(args)
    images = images_from_args(settings.image, settings.max_size)
    callbacks = standard_callbacks(args, job_type="filters") + [FilterTables()]
    return run_filters(images, settings.filters, callbacks, config=dataclasses.asdict(settings)).exit_code


def cmd_iou(args: argparse.Namespace) -> int:
    from dlhw.callbacks.experiments import IoUPlots
    from dlhw.trainers.iou import run_iou, setup_from_args

    setup = setup_from_args(args)
    callbacks = standard_callbacks(args, job_type="iou") + [IoUPlots()]
    return run_iou(setup, callbacks, config=dataclasses.asdict(setup)).exit_code


# What a resume may change: anything else would make the continued run a different experiment.
ALEXNET_RESUME_CHANGES = ("epochs", "device", "compile", "data", "download")
DETECT_RESUME_CHANGES = ("epochs", "device", "workers", "eval_batch_size", "data", "data_root", "image", "skip_photo",
                         "viz_images")


@contextmanager
def on_every_rank(args: argparse.Namespace, device: str) -> Iterator[Any]:
    """This rank of a torchrun job (or a world of one); the job's first failure goes up to :func:`main`, its echoes
    on the other ranks exit 1 quietly."""
    from dlhw.core.distributed import init_distributed

    dist = init_distributed(device)
    args.world_size = dist.world_size
    if dist.rank:  # its own dropout and sampling
        seed_everything(args.seed + dist.rank)
    try:
        yield dist
    except Exception:
        if dist.report_failure():
            raise
        raise SystemExit(1) from None
    finally:
        dist.shutdown()


def job_stamp(dist: Any, prefix: str) -> str:
    """``PREFIX-YYYYmmdd-HHMMSS-PID`` of rank 0 on every rank: names the job's folders."""
    return dist.all_gather_object(f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")[0]


def fit_callbacks(args: argparse.Namespace, dist: Any, ckpt_dir: Path, metric: str, *probes: Any, job_type: str,
                  dataset: tuple[str, Path], panels: Callable[[], list], tags: Sequence[str] = (),
                  upload_last: bool = False) -> list:
    """Logger, reports, ``probes``, checkpoints; with W&B on rank 0 also the data's lineage and ``panels()``."""
    from dlhw.callbacks.checkpoint import Checkpoint

    # Every step is logged: a step takes a second or more on a CPU, and what the probes see per step is the point.
    callbacks = [*standard_callbacks(args, job_type=job_type, monitor=(metric, "max"), tags=tags, log_every=1),
                 *probes, Checkpoint(ckpt_dir, monitor=metric, upload="end", upload_last=upload_last)]
    if args.wandb_mode != "disabled" and dist.is_main:
        from dlhw.callbacks.wandb_logger import DatasetArtifact

        callbacks += [DatasetArtifact(*dataset), *panels()]
    return callbacks


def cmd_alexnet(args: argparse.Namespace) -> int:
    from dlhw.callbacks.experiments import FeatureMapTable, FilterGrid, TestConfusionMatrix
    from dlhw.callbacks.weight_decay import DecayProbeCallback
    from dlhw.trainers.classification import build_trainer, resolve_args, resolve_device
    from dlhw.trainers.datasets import dataset_path
    from dlhw.tracking.resume import fit_from, resolve_resume

    with on_every_rank(args, resolve_device(args.device)) as dist:
        settings, notes = resolve_args(args)
        if dist.is_main and notes:
            print(*notes, sep="\n", file=sys.stderr)
        # Every rank reads the same last.pt (rank 0 wrote it): all of them continue from one state.
        resume = resolve_resume(args.resume, args.out, "alexnet-*/last.pt")
        ckpt_dir = resume.path.parent if resume else Path(args.out) / "checkpoints" / job_stamp(dist, "alexnet")
        # The probe runs on every rank: the others would otherwise wait for rank 0's at the next all-reduce.
        probe = DecayProbeCallback(hessian_every=settings.hessian_every, hessian_iters=settings.hessian_iters,
                                   every=settings.decay_every)
        maps = [FeatureMapTable(settings.viz_images)] if settings.viz_images else []
        callbacks = fit_callbacks(args, dist, ckpt_dir, "val/acc", probe, job_type="alexnet",
                                  panels=lambda: [FilterGrid(), TestConfusionMatrix(), *maps],
                                  dataset=(settings.dataset, dataset_path(settings.dataset, Path(settings.data))),
                                  tags=[settings.recipe, settings.variant, settings.wd_mode])
        fit_from(build_trainer(settings, callbacks, dist), resume, args.wandb_dir, ALEXNET_RESUME_CHANGES)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import torch

    from dlhw.callbacks.experiments import PhotoTable, PredictionTable
    from dlhw.trainers.detection.dataset import load_photo
    from dlhw.trainers.detection.trainer import build_trainer, compare_on_photo, model_label, prepare
    from dlhw.tracking.resume import fit_from, option_checkpoints, resolve_resume

    with on_every_rank(args, args.device or ("cuda" if torch.cuda.is_available() else "cpu")) as dist:
        # Rank 0 first: it may download or generate the data into the cache the others then read.
        if not dist.is_main:
            dist.barrier()
        plan = prepare(args, verbose=dist.is_main, rank=dist.rank)
        if dist.is_main:
            dist.barrier()
        # The photo is rank 0's alone: it runs both models on it once training is over.
        photo = None if plan.settings.skip_photo or not dist.is_main else load_photo(plan.settings.image)
        resume = resolve_resume(args.resume, args.out, "*/option*/last.pt")
        # The three runs share a group and name stem; a resumed command keeps the group its checkpoints are filed under.
        args.group = (resume.path.parent.parent.name if resume is not None else
                      args.group or os.environ.get("WANDB_RUN_GROUP") or job_stamp(dist, "detect"))

        def run_args(suffix: str) -> argparse.Namespace:
            stem = args.run_name or os.environ.get("WANDB_NAME") or args.group
            return argparse.Namespace(**{**vars(args), "run_name": f"{stem}-{suffix}"})

        models, results = {}, {}
        for option in plan.options:
            label = model_label(option, plan.settings)
            ckpt_dir = Path(args.out) / "checkpoints" / args.group / f"option{option}"
            done, earlier = option_checkpoints(ckpt_dir, resuming=resume is not None)
            if done is not None:  # trained to its end before: its final weights and results serve the photo
                trainer = build_trainer(plan, option, [], dist)
                trainer.load_state_dict(earlier.state["trainer"])
                if dist.is_main:
                    print(f"option {option}: finished in {ckpt_dir}; not trained again", file=sys.stderr)
            else:
                # The best and the last checkpoint staged once, at the end: Mask R-CNN's are ~350 MB with the optimizer.
                callbacks = fit_callbacks(run_args(f"option{option}"), dist, ckpt_dir, "val/bbox_AP",
                                          job_type=f"detect-option{option}", upload_last=True,
                                          dataset=(plan.settings.data_source, plan.settings.data_root),
                                          panels=lambda: [PredictionTable()])
                trainer = build_trainer(plan, option, callbacks, dist)
                done = fit_from(trainer, earlier, args.wandb_dir, DETECT_RESUME_CHANGES)
            models[label], results[label] = trainer.model, done
        if photo is not None:
            callbacks = standard_callbacks(run_args("photo"), job_type="detect-photo")
            callbacks.append(PhotoTable(log_to_wandb=args.wandb_mode != "disabled"))
            config = dataclasses.asdict(dataclasses.replace(plan.settings, photo=photo.source))
            compare_on_photo(photo, models, results, callbacks, config=config)
    return 0


def tracking(command: str) -> Callable[[argparse.Namespace], int]:
    """``launch.py COMMAND`` as ``dlhw.tracking.COMMAND.run_COMMAND(args)``, imported only when it runs."""
    return lambda args: getattr(importlib.import_module(f"dlhw.tracking.{command}"), f"run_{command}")(args)


def cmd_report(args: argparse.Namespace) -> int:
    from dlhw.tracking.report import write_report

    page = write_report(args.run_dirs or [args.out], args.output or Path(args.out) / "report.html")
    print(f"report: {page} ({page.stat().st_size / 1e6:.2f} MB)")
    return 0


# Each experiment's settings, imported only when its name is on the command line: torch imports take seconds.
EXPERIMENTS = {"filters": ("dlhw.trainers.filters", "FiltersSettings"), "iou": ("dlhw.trainers.iou", "IoUSetup"),
               "alexnet": ("dlhw.trainers.classification", "AlexNetSettings"),
               "detect": ("dlhw.trainers.detection.trainer", "DetectSettings")}


def get_args_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Global flags and one subparser per command, with the flags of the experiments named in ``argv`` (None: all)."""
    from dlhw.trainers.settings import add_arguments

    parser = Parser(prog="launch.py", description=__doc__, parents=[global_options(suppress=False)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, func: Callable[..., int], help: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[global_options(suppress=True)], help=help, description=description, **kwargs)
        p.set_defaults(func=func)
        # Only experiments take sweep parameters (else a dashboard SPEC.json would be read as ${args_json_file}).
        p.reads_sweep_params = name not in ("sweep", "compare", "dashboard")
        if name in EXPERIMENTS and (argv is None or name in argv):
            module, settings = EXPERIMENTS[name]
            add_arguments(p, getattr(importlib.import_module(module), settings))
        if name in ("alexnet", "detect"):
            p.add_argument("--resume", default=os.environ.get(RESUME_ENV) or None, metavar="PATH|auto",
                           help=f"continue a stopped run in the same W&B run: PATH is its checkpoints/.../last.pt, "
                                f"auto the newest unfinished one under --out (none yet: start afresh) "
                                f"(default: ${RESUME_ENV})")
        return p

    add("filters", cmd_filters, "hand-designed 3x3 filters applied to photos", "Blur and directional sharpening "
        "kernels on photos, logged as a W&B table, with a check of each kernel on generated gratings.")
    p = add("sweep", tracking("sweep"), "run a W&B sweep YAML here, offline, with W&B's sweeps engine", "Run the trials of a "
            "W&B sweep YAML locally: W&B's sweeps engine proposes them (grid, random, bayes) and stops laggards "
            "(hyperband); each trial is started as `wandb agent` would start it and leaves its own W&B run.")
    p.add_argument("config", nargs="?", metavar="SWEEP.yaml", help="the W&B sweep YAML (not needed with --resume)")
    p.add_argument("--count", type=int,
                   help="run at most N trials (default: the whole grid; random and bayes run until stopped)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once; they share the CPU threads (default 1)")
    p.add_argument("--resume", metavar="SWEEP_DIR",
                   help="continue the sweep kept in SWEEP_DIR without re-running its finished trials")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pin a parameter to one value for this run of the sweep (e.g. --param epochs=1); repeatable")
    p.add_argument("--sweep-id", metavar="[ENTITY/PROJECT/]ID",
                   help="attach the trials to this sweep on the W&B server (only one that exists there)")
    add("iou", cmd_iou, "IoU, its gradient along a sliding box, and IoU vs GIoU loss",
        "IoU from its set definition checked against torchvision; IoU, GIoU and DIoU with their gradients as one box "
        "slides across another; descents from disjoint starts with 1 - IoU loss (stuck) and GIoU loss.")
    # Here --project names the cloud project to read (ENTITY/PROJECT), replacing the global flag.
    p = add("compare", tracking("compare"), "compare runs: a ranked table and a plot against the swept parameters",
            "One table of runs with the config keys that differ and the chosen summary metrics, from local W&B run "
            "folders, a `launch.py sweep` folder, or the W&B cloud; plus a PNG of the metric against the swept "
            "parameters.", conflict_handler="resolve")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="W&B run folders, or folders holding them (a wandb/ folder, an --out folder)")
    p.add_argument("--sweep", metavar="SWEEP_DIR",
                   help="a folder written by `launch.py sweep`; with --project, a W&B sweep id")
    p.add_argument("--project", metavar="ENTITY/PROJECT",
                   help="read the runs of this W&B cloud project (online only; --group filters them)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="summary metric to show and rank by (repeatable; default: the sweep's metric)")
    p.add_argument("--goal", choices=("maximize", "minimize"),
                   help="ranking direction (default: the sweep's goal, else maximize)")
    p.add_argument("--plot", metavar="PNG",
                   help="where to write the plot (default: compare-METRIC.png in the sweep folder or --out)")
    add("detect", cmd_detect, "fine-tune two detectors on Penn-Fudan and compare them", "The torchvision detection "
        "fine-tuning tutorial as a tracked experiment: option 1 (Mask R-CNN R50-FPN) and option 2 (Faster R-CNN on "
        "another backbone) trained on Penn-Fudan, COCO AP every epoch, both models on the Beatles photo, a verdict.")
    add("alexnet", cmd_alexnet, "AlexNet (course / d2l) and weight decay three ways", "Train the course's CIFAR-10 "
        "AlexNet or d2l's 224x224 AlexNet (digits offline by default) with l2, coupled or decoupled weight decay, a "
        "probe of the decay and the learning rate's stability, learned filters, feature maps and a confusion matrix.")
    p = add("report", cmd_report, "one self-contained HTML page from local runs",
            "Gathers the filters, weight-decay, IoU, AlexNet and detection runs into one HTML page (pictures "
            "embedded) from local W&B run folders; a missing experiment is named on the page.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="W&B run folders, or folders holding them (default: the runs under --out)")
    p.add_argument("--output", metavar="HTML", help="where to write the page (default: --out/report.html)")
    p = add("dashboard", tracking("dashboard"), "save the homework's W&B workspace views (and Report)",
            "One W&B workspace view per experiment and, with --report, a W&B Report of the homework, built with "
            "wandb-workspaces (pip install -e \".[dashboard]\").")
    p.add_argument("--report", action="store_true", help="also the Report: docs/theory.md beside the runs' panels")
    p.add_argument("--sweep", metavar="ID", help="the Report shows this sweep's runs (--group: a group's)")
    p.add_argument("--dry-run", action="store_true",
                   help="save nothing: write the specs under --out/dashboard and check their keys against local runs")
    p.add_argument("--check", action="append", default=[], metavar="SPEC.json",
                   help="check these spec files against the local runs under --out instead (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None, *, exit_by_signal: bool = False) -> int:
    """Run the command in ``argv``; its exit code, 2 for usage errors, 128 + signal for a stop (or, with
    ``exit_by_signal``, the process ends as killed by it)."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = get_args_parser(argv).parse_args(argv)
        if not gc.isenabled():  # started as a script: what start-up imported is left out of every collection
            gc.freeze()
            gc.enable()
        resolve_locations(args)
        args.wandb_mode, why = resolve_mode(args.wandb_mode)
        if is_rank_zero() and args.command != "dashboard":  # it starts no run
            print(f"W&B mode: {args.wandb_mode} ({why})", file=sys.stderr)
        seed_everything(args.seed)
        return args.func(args)
    except (UsageError, FloatingPointError) as exc:  # a diverged run (FloatingPointError) already failed in W&B
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except Stopped as stop:
        if exit_by_signal:
            end_by_signal(stop.signum)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    gc.disable()  # until main() has imported its command: start-up allocates much and frees little
    code = main(exit_by_signal=True)
    gc.freeze()  # the exit's collections need not walk torch's and W&B's objects once more
    sys.exit(code)
