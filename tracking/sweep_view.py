"""What a sweep shows: a live table of its trials while it runs, a ranked table when it ends."""

from __future__ import annotations

import signal
import time
from functools import partial

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dlhw.callbacks.progress import fmt, report_console
from dlhw.core.errors import UsageError
from dlhw.tracking.sweep import (
    ENDED, FINISHED, RUNNING, Runner, Sweep, SweepStopped, load_config, parse_param_overrides, reproduce_command)

_STYLE = dict(running="cyan", finished="green", failed="red", stopped="yellow", interrupted="magenta")


def trials_table(sweep: Sweep, *, ranked: bool = False) -> Table:
    """The ended trials best first, or (live) running ones first: state, swept parameters, the metric, time."""
    metric, swept = (sweep.metric or {}).get("name"), sweep.swept()
    if ranked:
        trials = sweep.ranked()
        title = "trials ranked" + (f" ({sweep.metric['goal']} {sweep.metric['name']})" if sweep.metric else "")
    else:
        trials = sorted(sweep.trials, key=lambda t: t.state != RUNNING)[:20]
        title = f"{sum(t.state in ENDED for t in sweep.trials)} ended of {'?' if sweep.cap == float('inf') else sweep.cap}"
    table = Table(title=f"sweep {sweep.name}: {title}", title_justify="left")
    columns = ["rank" if ranked else "#", "run", "state", *swept]
    columns += ([] if ranked else [f"{metric} (last)"]) + [f"{metric} (best)"] if metric else []
    for name in [*columns, "time"]:
        table.add_column(name, justify="left" if name in ("run", "state") else "right")
    for pos, t in enumerate(trials, 1):
        cells = [str(pos if ranked else t.index), t.run_id, f"[{_STYLE.get(t.state, 'dim')}]{t.state}",
                 *(fmt(t.values.get(name)) for name in swept)]
        if metric:
            cells += ([] if ranked else [fmt(t.history[-1][metric] if t.history else None)])
            cells.append(fmt(t.score(sweep.metric)))
        table.add_row(*cells, f"{(t.ended or time.time()) - t.started:.0f}s" if t.started else "-")
    return table


def final_report(sweep: Sweep, console: Console) -> None:
    """The ranked table, the best configuration and the command that reproduces it."""
    say = partial(console.print, highlight=False, soft_wrap=True)
    console.print(trials_table(sweep, ranked=True))
    best = next((t for t in sweep.ranked() if t.state == FINISHED), None)
    if best is not None:
        say(f"best: trial {best.index} (run {best.run_id})  " + "  ".join(f"{k}={fmt(v)}" for k, v in best.values.items()))
        say(f"reproduce: {reproduce_command(best)}")
    say(f"sweep folder: {sweep.directory}   compare: python launch.py compare --sweep {sweep.directory}   "
        f"upload: wandb sync {sweep.directory}/trials/*/wandb/offline-run-*")


def run_sweep(*, yaml_path: str | None, resume: str | None, out: str, count: int | None, jobs: int,
              params: list[str], sweep_id: str | None, seed: int, wandb_mode: str | None,
              console: Console | None = None) -> int:
    """``launch.py sweep``: start or resume a sweep, run it with a live table, report; the exit code."""
    console = console or report_console(stderr=True)
    say = partial(console.print, highlight=False, soft_wrap=True)
    for flag, value in (("--jobs", jobs), ("--count", count)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if resume:
        sweep = Sweep.load(resume)
        sweep.count, ended = count or sweep.count, sum(t.state in ENDED for t in sweep.trials)
        left = len(sweep.trials) - ended
        say(f"resuming sweep {sweep.name} in {sweep.directory}: {ended} trials already ended"
            + (f", {left} interrupted go on from their last checkpoint in their own W&B runs" if left else ""))
    elif not yaml_path:
        raise UsageError("pass a sweep YAML (python launch.py sweep sweeps/weight_decay.yaml) or --resume SWEEP_DIR")
    else:
        config = load_config(yaml_path, parse_param_overrides(params))
        sweep = Sweep.create(config, out=out, source=yaml_path, count=count, sweep_id=sweep_id, seed=seed)
        say(f"sweep {sweep.name} ({config['method']}) in {sweep.directory}" + (
            "; random and bayes never run out: stop with --count N, run_cap or Ctrl-C, go on with --resume"
            if config["method"] != "grid" and sweep.cap == float("inf") else ""))
    # A scheduler's SIGTERM gets the clean stop of Ctrl-C (trials in their own process groups would outlive us).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Live(get_renderable=lambda: trials_table(sweep), console=console, refresh_per_second=2, transient=True):
            Runner(sweep, jobs=jobs, wandb_mode=wandb_mode, say=say).run()
    except SweepStopped as exc:
        final_report(sweep, console)
        say(f"error: {exc}", style="red")
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; continue with: python launch.py sweep --resume {sweep.directory}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    final_report(sweep, console)
    return 0 if any(t.state == FINISHED for t in sweep.trials) else 1
