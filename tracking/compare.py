"""``launch.py compare``: runs best first (local folders, a sweep or the W&B cloud) and a PNG of the metric."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import wandb
from rich.table import Table

from dlhw.callbacks.progress import fmt, report_console
from dlhw.core.errors import UsageError
from dlhw.tracking.readback import RunRecord, local_runs, visible

T = TypeVar("T")
BOOKKEEPING = frozenset({"out", "run_name", "group"})  # where and as what a run was filed: differs in every run


def rank(items: Iterable[T], value: Callable[[T], float | None], goal: str) -> list[T]:
    """Best first by ``value`` for ``goal`` ("maximize" or "minimize"); items without one (None, NaN) last."""
    sign = -1.0 if goal == "maximize" else 1.0
    return sorted(items, key=lambda item: (1, 0.0) if (v := value(item)) is None or math.isnan(v) else (0, sign * v))


def sweep_runs(sweep_dir: str | Path) -> tuple[list[RunRecord], Any]:
    """A ``launch.py sweep`` folder's trials that left a W&B run (read back only without the runner's summary)."""
    from dlhw.tracking.sweep import Sweep

    sweep = Sweep.load(sweep_dir)
    trials = [t for t in sweep.trials if t.run_dir and Path(t.run_dir).is_dir()]
    unread = [t for t in trials if not t.summary]
    read = dict(zip((t.run_id for t in unread), local_runs([Path(t.run_dir) for t in unread])))
    return [replace(read.get(t.run_id) or RunRecord(t.run_id, t.state, {}, visible(t.summary), t.run_dir),
                    name=t.run_id, state=t.state, params=t.values) for t in trials], sweep


def cloud_runs(project: str, *, mode: str, group: str | None, sweep: str | None) -> tuple[list[RunRecord], dict]:
    """Runs of ENTITY/PROJECT (or of its sweep ``sweep``, with that sweep's metric) from the W&B server."""
    if mode != "online":
        raise UsageError("--project reads runs from the W&B cloud, which needs `wandb login` and a network; "
                         "compare local runs with RUN_DIR ... or --sweep SWEEP_DIR")
    try:
        api, metric = wandb.Api(timeout=30), {}
        if sweep:  # trials under `wandb agent` have no group: only their sweep finds them
            found = api.sweep(f"{project}/{sweep.rsplit('/', 1)[-1]}")
            runs, metric = found.runs, found.config.get("metric") or {}
        else:
            runs = api.runs(project, filters={"group": group} if group else None)
        return [RunRecord(name=r.name or r.id, state=r.state, config=visible(r.config),
                          summary=visible(r.summary._json_dict), source=r.url) for r in runs], metric
    except Exception as exc:  # the public API raises several types for "no server" / "no project"
        raise UsageError(f"could not read runs of {project} from W&B ({type(exc).__name__}: {exc}); "
                         "check the ENTITY/PROJECT path and your login") from None


def differing_keys(records: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values are not the same in every run (bookkeeping flags left out)."""
    keys = sorted({k for r in records for k in r.config} - BOOKKEEPING)
    return [k for k in keys if len({repr(r.config.get(k)) for r in records}) > 1]


def plot_series(records: Sequence[RunRecord], keys: Sequence[str], metric: str,
                goal: str) -> tuple[str, dict[str, list[tuple[float, float]]]] | None:
    """The numeric key with the most values as x, and a line of ``(x, metric)`` per combination of the others."""
    values = [{**r.config, **r.params} for r in records]
    numeric = [k for k in keys if all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool)
                                      for v in values)]
    if not numeric:
        return None
    x_key = max(numeric, key=lambda k: (len({v[k] for v in values}), -keys.index(k)))
    others = [k for k in keys if k != x_key]
    series: dict[str, list[tuple[float, float]]] = {}
    for r, v in zip(records, values):
        y = r.value(metric, goal)
        if y is not None:
            label = ", ".join(f"{k}={fmt(v.get(k))}" for k in others) or metric
            series.setdefault(label, []).append((float(v[x_key]), y))
    return (x_key, {label: sorted(points) for label, points in sorted(series.items())}) if series else None


def save_lines(series: Mapping[str, Sequence[tuple[float, float]]], title: str, target: Any, *, xlabel: str = "",
               ylabel: str = "", marker: str | None = "o", log_x: bool = False, size: tuple = (7, 4.5)) -> None:
    """One line per label, saved as a PNG to ``target`` (a path or a binary file)."""
    from matplotlib.figure import Figure  # not pyplot: no backend or global figure state

    fig = Figure(figsize=size, dpi=110)
    ax = fig.subplots()
    for label, points in series.items():
        ax.plot(*zip(*points), marker=marker, label=label)
    xs = [x for pts in series.values() for x, _ in pts]
    positive = [x for x in xs if x > 0]
    if log_x and positive and max(positive) / min(positive) >= 10:  # decades of lambda, lr; a zero needs symlog
        if min(xs) > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=min(positive))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, format="png")


def run_compare(args: argparse.Namespace) -> int:
    """``launch.py compare``: print the table, write the plot; with ``--project``, ``--sweep`` is a W&B sweep id."""
    run_dirs, sweep_dir, project, goal = args.run_dirs, args.sweep, args.project, args.goal
    console = report_console()
    records, swept, where, sweep_metric = [], [], Path(args.out), {}
    if sweep_dir and not project:
        records, sweep = sweep_runs(sweep_dir)
        swept, sweep_metric, where = sweep.swept(), sweep.metric or {}, sweep.directory
    if run_dirs:
        records += local_runs(run_dirs)
    if project:
        recs, sweep_metric = cloud_runs(project, mode=args.wandb_mode, group=args.group, sweep=sweep_dir)
        records += recs
    if not (sweep_dir or run_dirs or project):
        raise UsageError("nothing to compare: pass run folders, --sweep SWEEP_DIR or --project ENTITY/PROJECT")
    if not records:
        raise UsageError("no runs found to compare (the sweep's trials left no W&B runs yet)")
    # Without --metric: the sweep's, else up to 4 numeric summary keys every run has.
    metrics = list(args.metric) or ([sweep_metric["name"]] if sweep_metric.get("name") else sorted(
        set.intersection(*({k for k in r.summary if r.value(k) is not None} for r in records)))[:4])
    goal = goal or (sweep_metric.get("goal") if metrics[:1] == [sweep_metric.get("name")] else None) or "maximize"
    keys = swept + [k for k in differing_keys(records) if k not in swept]
    ranked = rank(records, lambda r: r.value(metrics[0], goal), goal) if metrics else records
    title = f"{len(records)} runs" + (f", ranked by {metrics[0]} ({goal})" if metrics else "")
    table = Table(title=title, title_justify="left")
    for col in ("#", "run", "state", *keys, *metrics):
        table.add_column(col, justify="left" if col in ("run", "state") else "right")
    for pos, r in enumerate(ranked, 1):
        values = {**r.config, **r.params}
        table.add_row(str(pos), r.name, r.state, *(fmt(values.get(k)) for k in keys),
                      *(fmt(r.value(m, goal)) for m in metrics))
    console.print(table)
    if not metrics:
        console.print("no numeric summary metric is shared by all runs; pass --metric NAME", highlight=False)
        return 0
    layout = plot_series(ranked, swept or keys, metrics[0], goal)
    if layout is None:
        console.print(f"no plot: no numeric parameter differs between the runs with a value of {metrics[0]}",
                      highlight=False)
        return 0
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", metrics[0]).strip("_")
    png = Path(args.plot or where / f"compare-{slug}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    save_lines(layout[1], f"{metrics[0]} vs {layout[0]}", png, xlabel=layout[0], ylabel=metrics[0], log_x=True)
    console.print(f"plot: {png}", highlight=False, soft_wrap=True)
    return 0
