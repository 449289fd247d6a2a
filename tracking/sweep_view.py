"""What a sweep shows: a live table of its trials while it runs, a ranked table when it ends."""

from __future__ import annotations

import signal
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dlhw.callbacks.progress import report_console
from dlhw.core.errors import UsageError
from dlhw.tracking.sweep import (
    ENDED, FAILED, FINISHED, INTERRUPTED, RUNNING, STOPPED, Runner, Sweep, SweepStopped, Trial, load_config,
    parse_param_overrides, reproduce_command,
)

_STYLE = {RUNNING: "cyan", FINISHED: "green", FAILED: "red", STOPPED: "yellow", INTERRUPTED: "magenta"}


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _latest(trial: Trial, metric: str | None) -> Any:
    return trial.history[-1].get(metric) if metric and trial.history else None


def trials_table(sweep: Sweep, trials: list[Trial], *, title: str, ranked: bool = False) -> Table:
    """One row per trial: state, swept parameters, the metric (latest and best), time."""
    metric = (sweep.metric or {}).get("name")
    table = Table(title=title, title_justify="left")
    table.add_column("rank" if ranked else "#", justify="right")
    table.add_column("run")
    table.add_column("state")
    swept = sweep.swept()
    for name in swept:
        table.add_column(name, justify="right")
    if metric:
        if not ranked:
            table.add_column(f"{metric} (last)", justify="right")
        table.add_column(f"{metric} (best)", justify="right")
    table.add_column("time", justify="right")
    for pos, t in enumerate(trials, 1):
        elapsed = ((t.ended or time.time()) - t.started) if t.started else None
        cells = [str(pos if ranked else t.index), t.run_id, f"[{_STYLE.get(t.state, 'dim')}]{t.state}"]
        cells += [_num(t.values.get(name)) for name in swept]
        if metric:
            if not ranked:
                cells.append(_num(_latest(t, metric)))
            cells.append(_num(t.score(sweep.metric)))
        cells.append(f"{elapsed:.0f}s" if elapsed is not None else "-")
        table.add_row(*cells)
    return table


class LiveView:
    """The rich live table, redrawn twice a second by rich's own thread, plus one line per event."""

    MAX_ROWS = 20

    def __init__(self, sweep: Sweep, console: Console | None = None) -> None:
        self.sweep = sweep
        self.console = console or Console(stderr=True)
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=True)

    def _render(self) -> Table:
        trials = list(self.sweep.trials)
        shown = [t for t in trials if t.state == RUNNING] + [t for t in trials if t.state != RUNNING]
        done = sum(t.state in ENDED for t in trials)
        total = self.sweep.count if self.sweep.count is not None else "?"
        return trials_table(self.sweep, shown[: self.MAX_ROWS],
                            title=f"sweep {self.sweep.name}: {done} ended of {total}")

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def say(self, message: str, style: str | None = None) -> None:
        self.console.print(message, style=style, highlight=False, soft_wrap=True)


def final_report(sweep: Sweep, console: Console) -> None:
    """The ranked table, the best configuration and the command that reproduces it."""
    ranked = sweep.ranked()
    metric = sweep.metric
    goal = f" ({metric['goal']} {metric['name']})" if metric else ""
    console.print(trials_table(sweep, ranked, title=f"sweep {sweep.name}: trials ranked{goal}", ranked=True))
    best = next((t for t in ranked if t.state == FINISHED), None)
    if best is not None:
        console.print(f"best: trial {best.index} (run {best.run_id})  "
                      + "  ".join(f"{k}={_num(v)}" for k, v in best.values.items()), highlight=False, soft_wrap=True)
        console.print(f"reproduce: {reproduce_command(best)}", highlight=False, soft_wrap=True)
    console.print(f"sweep folder: {sweep.directory}", highlight=False, soft_wrap=True)
    if (sweep.directory / "wandb").is_dir():
        console.print(f"look: wandb leet {sweep.directory / 'wandb'}   compare: python launch.py compare "
                      f"--sweep {sweep.directory}   upload: wandb sync {sweep.directory / 'wandb'}/offline-run-*",
                      highlight=False, soft_wrap=True)


def run_sweep(*, yaml_path: str | None, resume: str | None, out: str, count: int | None, jobs: int,
              params: list[str], sweep_id: str | None, seed: int, wandb_mode: str | None,
              console: Console | None = None) -> int:
    """``launch.py sweep``: start or resume a sweep, run it with a live table, report; the exit code."""
    console = console or report_console(stderr=True)
    for flag, value in (("--jobs", jobs), ("--count", count)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if resume:
        sweep = Sweep.load(resume)
        if count is not None:
            sweep.count = count
        unfinished = sum(t.state not in ENDED for t in sweep.trials)
        console.print(f"resuming sweep {sweep.name} in {sweep.directory}: "
                      f"{sum(t.state in ENDED for t in sweep.trials)} trials already ended"
                      + (f", {unfinished} interrupted go on from their last checkpoint in their own W&B runs"
                         if unfinished else ""), highlight=False, soft_wrap=True)
    else:
        if not yaml_path:
            raise UsageError("pass a sweep YAML (python launch.py sweep sweeps/weight_decay.yaml) or --resume SWEEP_DIR")
        config = load_config(yaml_path, parse_param_overrides(params))
        sweep = Sweep.create(config, out=out, source=yaml_path, count=count, sweep_id=sweep_id, seed=seed)
        endless = config["method"] != "grid" and count is None
        console.print(f"sweep {sweep.name} ({config['method']}) in {sweep.directory}"
                      + ("; random and bayes never run out: stop with --count N or Ctrl-C, go on with --resume"
                         if endless else ""), highlight=False, soft_wrap=True)
    view = LiveView(sweep, console)
    runner = Runner(sweep, jobs=jobs, wandb_mode=wandb_mode, view=view)
    # A scheduler's SIGTERM gets the same clean stop as Ctrl-C (as wandb agent treats it): trials
    # run in their own process groups and would otherwise outlive the runner.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with view:
            runner.run()
    except SweepStopped as exc:
        final_report(sweep, console)
        console.print(f"error: {exc}", style="red", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: python launch.py sweep --resume {sweep.directory}",
                      highlight=False, soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    final_report(sweep, console)
    return 0 if any(t.state == FINISHED for t in sweep.trials) else 1
