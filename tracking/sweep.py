"""``launch.py sweep``, no server: W&B's ``sweeps`` engine proposes and stops trials, run as ``wandb agent`` does."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import time
import warnings
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.live import Live
from rich.table import Table
from wandb import env as wandb_env
from wandb.sdk.lib.runid import generate_id
from wandb.wandb_agent import Agent

from dlhw.callbacks.progress import fmt, report_console
from dlhw.core.errors import UsageError
from dlhw.core.files import atomic_file
from dlhw.core.events import METRIC_ENV, METRIC_FILE_ENV
from dlhw.tracking import agent_command
from dlhw.tracking.cli import OUT_ENV, RESUME_ENV
from dlhw.tracking.compare import rank

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the engine's pydantic-v1 spellings warn at import
    import sweeps
    from sweeps.config.cfg import validator as _schema_validator

STATE_FILE, STATE_VERSION = "sweep.json", 3  # 3: metric rows keyed by the trial's own step
DOCS = "https://docs.wandb.ai/guides/sweeps/define-sweep-configuration"
RUNNING, FINISHED, FAILED, STOPPED, INTERRUPTED = "running", "finished", "failed", "stopped", "interrupted"
ENDED = (FINISHED, FAILED, STOPPED)
POLL_S = 0.1  # seconds between two looks at the running trials
_ENGINE_STATE = {STOPPED: "killed", INTERRUPTED: "pending"}  # an interrupted trial runs again as itself


def config_problems(config: Any) -> list[str]:
    """What keeps ``config`` from running: W&B's schema violations (once each, keyed), else the engine's refusals."""
    if not isinstance(config, dict):
        return ["the file must hold a mapping of sweep keys (method, metric, parameters, ...)"]
    try:
        located = {e.message: ".".join(map(str, e.absolute_path)) for e in _schema_validator.iter_errors(config)}
        found = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as exc:
        return [str(exc)]
    if problems := list(dict.fromkeys(f"{located[m]}: {m}" if located.get(m) else m for m in found)):
        return problems
    for name, spec in config.get("parameters", {}).items():  # the agent writes --x=None, and a mapping as its repr
        values = [spec.get("value")] if "value" in spec else spec.get("values", [])
        if "parameters" in spec or any(v is None or isinstance(v, dict) for v in values):
            problems.append(f"parameters.{name}: a None or mapping value reaches the program as the text "
                            f"'--{name}=None' or a dict's repr; give plain values")
    try:  # the engine's own refusals: a grid of ranges, bayes or hyperband without a metric, method custom
        if not problems:
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
    except Exception as exc:  # raised as several exception types
        problems.append(str(exc).strip().splitlines()[0])
    program, command = config.get("program"), config.get("command") or agent_command.DEFAULT_SWEEP_COMMAND
    if "${program}" in map(str, command) and not (program and Path(program).is_file()):
        problems.append(f"program {program!r} is not a file in {Path.cwd()}; wandb agent runs it from its working "
                        "folder, so start the sweep from the folder it expects")
    return problems


def load_config(path: str | Path, pinned: list[str] = ()) -> dict[str, Any]:
    """A sweep YAML with ``pinned`` values (``["epochs=1"]``), checked as W&B would; each problem a UsageError."""
    path, hint = Path(path), "pass a W&B sweep YAML such as sweeps/weight_decay.yaml"
    if not path.is_file():
        raise UsageError(f"{path} is a folder; {hint}" if path.is_dir() else f"sweep file not found: {path}; {hint}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a text file (byte {exc.start} is not UTF-8); {hint}") from None
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}" if e.problem_mark else ""
        context = f" ({e.context} from line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        raise UsageError(f"{path} is not valid YAML{where}: {e.problem}{context}; fix the file there") from None
    for item in pinned:
        name, equals, value = item.partition("=")
        if not (name and equals):
            raise UsageError(f"--param {item!r} is not NAME=VALUE; write e.g. --param epochs=1")
        if isinstance(config, dict):
            config.setdefault("parameters", {})[name] = {"value": yaml.safe_load(value)}
    if problems := config_problems(config):
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)) if len(problems) > 1 else problems[0]
        raise UsageError(f"{path} is not a valid W&B sweep: {listed}; fix the file (see {DOCS})")
    return config


def _started_at(pid: int | None) -> int | None:
    # clock ticks since boot; None when the process is gone or a zombie
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if stat[0] in "ZX" else int(stat[19])


@dataclass
class Trial:
    """One run of the sweep's program: its parameters, process and the metric it reported."""

    index: int
    run_id: str
    params: dict[str, dict[str, Any]]  # wire form: {"lr": {"value": 0.1}}
    out_dir: str
    command: list[str] = field(default_factory=list)
    state: str = "pending"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # {"step": the trial's own, metric: value}
    run_dir: str | None = None
    note: str = ""
    pid: int | None = None  # the latest attempt's process group, and its leader's start time:
    pid_started: int | None = None  # a later runner stops an orphan, never a process that got the number since
    resumed: int = 0

    log = property(lambda self: Path(self.out_dir) / "trial.log")
    metric_file = property(lambda self: Path(self.out_dir) / "metric.jsonl")
    values = property(lambda self: {k: v["value"] for k, v in self.params.items()})
    summary = property(lambda self: {k: v for k, v in self.history[-1].items() if k != "step"} if self.history else {})
    alive = property(lambda self: self.pid_started is not None and _started_at(self.pid) == self.pid_started)

    def engine_run(self) -> sweeps.SweepRun:
        return sweeps.SweepRun(name=self.run_id, state=sweeps.RunState(_ENGINE_STATE.get(self.state, self.state)),
                               config=self.params, history=self.history, summary_metrics=self.summary)

    def score(self, metric: dict[str, Any] | None) -> float | None:
        """The trial's best value of the sweep's metric, as the engine ranks it (None if never reported)."""
        try:  # the engine reads "maximize" and "minimize" as they are
            return float(self.engine_run().metric_extremum(metric["name"], metric["goal"]))
        except (TypeError, ValueError):
            return None

    def read_metric(self, metric: str | None) -> bool:
        """Whether new whole ``[step, value]`` lines came (a resumed attempt's replace those from its step on)."""
        data = self.metric_file.read_bytes() if self.metric_file.exists() else b""
        history: list[dict[str, Any]] = []
        for step, value in map(json.loads, data[: data.rfind(b"\n") + 1].splitlines()):  # whole lines only
            history = [r for r in history if r["step"] < step] + [{"step": step, metric: value}]
        changed, self.history = history != self.history, history
        return changed


@dataclass
class Sweep:
    """A sweep's config and trials, kept in ``directory/sweep.json`` (written atomically)."""

    directory: Path
    config: dict[str, Any]
    name: str
    local_id: str
    sweep_id: str | None = None
    count: int | None = None
    seed: int = 0
    trials: list[Trial] = field(default_factory=list)

    @classmethod
    def create(cls, config: dict[str, Any], *, out: str | Path, source: str, count: int | None,
               sweep_id: str | None = None, seed: int = 0) -> Sweep:
        if sweep_id:  # checked before the sweep's folder is made
            agent_command.split_sweep_path(sweep_id)
        local_id, name = generate_id(), str(config.get("name") or Path(source).stem)
        directory = Path(out).resolve() / "sweeps" / f"{name}-{local_id}"
        directory.mkdir(parents=True)
        sweep = cls(directory, config, name, local_id, sweep_id, count, seed)
        sweep.save()
        return sweep

    @classmethod
    def load(cls, directory: str | Path) -> Sweep:
        directory, again = Path(directory).resolve(), "pass the folder `launch.py sweep` printed when it started"
        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise UsageError(f"{directory} holds no sweep ({STATE_FILE} missing or unreadable); {again}") from None
        if not isinstance(state, dict) or "config" not in state:
            raise UsageError(f"{directory / STATE_FILE} is not a sweep's state; {again}")
        if state.get("version", 1) > STATE_VERSION:
            raise UsageError(f"{directory / STATE_FILE} was written by a newer version of this suite (format "
                             f"{state['version']}, this one reads up to {STATE_VERSION}); resume it with that version")
        trial_keys, keys = {f.name for f in fields(Trial)}, {f.name for f in fields(cls)} - {"directory", "trials"}
        return cls(directory, **{k: v for k, v in state.items() if k in keys}, trials=[
            Trial(**{k: v for k, v in t.items() if k in trial_keys}) for t in state.get("trials", [])])

    def save(self) -> None:
        state = {"version": STATE_VERSION, **{k: v for k, v in asdict(self).items() if k != "directory"}}
        with atomic_file(self.directory / STATE_FILE) as fh:
            fh.write(json.dumps(state, indent=1, default=str).encode())

    metric = property(lambda self: self.config.get("metric"))
    cap = property(lambda self: min(self.count or math.inf, self.config.get("run_cap") or math.inf))

    def propose(self) -> dict[str, dict[str, Any]] | None:
        """The engine's next parameters as plain JSON values (as from the server), None when a grid is exhausted."""
        # Random and bayes draw from NumPy's global generator: seeded per trial, repeatable across --resume.
        np.random.seed((self.seed * 100_003 + len(self.trials)) % 2**32)
        run = sweeps.next_run(self.config, [t.engine_run() for t in self.trials])
        return None if run is None else json.loads(json.dumps(run.config, default=lambda v: v.item()))

    def ranked(self) -> list[Trial]:
        ended = [t for t in self.trials if t.state in ENDED]
        return rank(ended, lambda t: t.score(self.metric), (self.metric or {}).get("goal", "minimize"))

    def swept(self) -> list[str]:
        return [k for k, v in self.config["parameters"].items() if not (isinstance(v, dict) and "value" in v)]


class SweepStopped(Exception):
    """The sweep gave up (repeated failures); the message says why."""


class Runner:
    """Runs a sweep's trials, ``jobs`` at a time, each in its own folder; wandb's ``Agent`` stops and counts them."""

    def __init__(self, sweep: Sweep, *, jobs: int = 1, wandb_mode: str | None = None, say: Any = None) -> None:
        self.sweep, self.jobs, self.wandb_mode, self.exhausted = sweep, jobs, wandb_mode, False
        self.say = say or (lambda message, style=None: None)
        self.metric, had_dir = (sweep.metric or {}).get("name"), wandb_env.DIR in os.environ
        self.agent = Agent(api=None, queue=None)  # no server: only its process and failure rules
        self.live = self.agent._run_processes  # the running trials' processes, by run id
        if not had_dir:  # it sets WANDB_DIR for the trials it starts; ours get their own
            del os.environ[wandb_env.DIR]

    def _start(self, trial: Trial) -> None:
        """Start a trial, or an interrupted one again as itself, from its own last checkpoint."""
        sweep, resume = self.sweep, trial.state == INTERRUPTED
        files = sweep.directory / "wandb" / f"sweep-{sweep.local_id}" / f"config-{trial.run_id}"
        defaults = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"),
                                 str(max(1, len(os.sched_getaffinity(0)) // self.jobs)))  # a share of the CPUs
        defaults[wandb_env.RUN_GROUP] = sweep.name
        if sweep.config.get("project") and not sweep.sweep_id:
            defaults[wandb_env.PROJECT] = str(sweep.config["project"])
        env = agent_command.trial_environment({**defaults, **os.environ}, run_id=trial.run_id, params=trial.params,
                                              param_file=files.with_suffix(".yaml"), sweep_id=sweep.sweep_id)
        env[OUT_ENV] = env[wandb_env.DIR] = trial.out_dir  # the agent's WANDB_DIR is its working folder
        env.update({METRIC_ENV: self.metric, METRIC_FILE_ENV: str(trial.metric_file)} if self.metric else {})
        env.update({wandb_env.MODE: self.wandb_mode} if self.wandb_mode else {})
        env.pop(RESUME_ENV, None)  # a new trial starts from nothing, whatever the runner's environment says
        python = agent_command.interpreter(env)  # on the trial's PATH, a resumed one's too
        if resume:  # WANDB_RESUME=must fails for an offline-only run
            env[RESUME_ENV], env[wandb_env.RESUME], trial.resumed = "auto", "allow", trial.resumed + 1
        else:
            trial.command = agent_command.trial_command(
                sweep.config.get("command"), program=sweep.config.get("program"), params=trial.params,
                args_json_file=files.with_suffix(".json"), python=python)
        with open(trial.log, "a") as log:
            resumed = f"\n--- resumed: attempt {trial.resumed + 1} of this trial ({trial.note}) ---\n" if resume else ""
            print(resumed, end="", file=log, flush=True)  # before the trial's own lines
            try:  # as the agent does: own process group, stdin a pipe closed at once
                proc = subprocess.Popen(trial.command, env=env, stdin=subprocess.PIPE, stdout=log,
                                        stderr=subprocess.STDOUT, process_group=0)
            except OSError as exc:
                print(f"could not start {trial.command}: {exc}", file=log)
                return self._ended(trial, 127)
        proc.stdin.close()
        proc.trial, proc.last_sigterm_time = trial, None  # the latter as the agent's _command_stop keeps it
        self.live[trial.run_id] = proc
        trial.state, trial.note, trial.pid, trial.pid_started = RUNNING, "", proc.pid, _started_at(proc.pid)
        trial.started = trial.started or time.time()
        sweep.save()
        self.say(f"trial {trial.index} {'resumed in run ' + trial.run_id if resume else 'started'}: "
                 + " ".join(f"{k}={fmt(v)}" for k, v in trial.values.items()) + f"  (log: {trial.log})")

    def _stop(self, trials: list[Trial]) -> None:
        """As the agent stops them: SIGTERM, after its kill delay (or on Ctrl-C) SIGKILL to the process group."""
        trials = [t for t in trials if t.alive]
        for trial in trials:
            with suppress(OSError):
                os.kill(trial.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.agent._kill_delay
        try:
            while any(t.alive for t in trials) and time.monotonic() < deadline:
                time.sleep(POLL_S)
        finally:
            for trial in trials:
                with suppress(OSError):  # the group may be gone already
                    os.killpg(trial.pid, signal.SIGKILL)

    def _ended(self, trial: Trial, code: int) -> None:
        found = sorted(Path(trial.out_dir).glob(f"wandb/*run-*-{trial.run_id}"), key=lambda p: p.name.split("run-")[1])
        trial.run_dir, trial.exit_code, trial.ended = str(found[-1]) if found else trial.run_dir, code, time.time()
        if trial.state != STOPPED:  # killed by a signal is no failure to the agent either
            trial.state, trial.note = (FAILED, f"exit code {code}; log: {trial.log}") if code > 0 else (FINISHED, "")
        score = trial.score(self.sweep.metric)
        self.say(f"trial {trial.index} {trial.state}" + (f" ({trial.note})" if trial.note else "") + (
            f"  {self.metric}={fmt(score)}" if score is not None else ""), style="red" if code > 0 else None)
        self.sweep.save()
        agent = self.agent  # counted as Agent._run_loop counts an ended run
        if code > 0:
            agent._failed += 1
            if (flapping := agent.is_flapping()) or agent.is_failing():
                how = f"within the first {agent.FLAPPING_MAX_SECONDS} s" if flapping else f"and {agent._finished} ended"
                raise SweepStopped(f"{agent._failed} trials failed {how}, so the sweep stops as wandb agent does "
                                   "(WANDB_AGENT_DISABLE_FLAPPING, WANDB_AGENT_MAX_INITIAL_FAILURES change that)")
        agent._finished += 1

    def _step(self) -> bool:
        """One poll: read metrics, end what exited, stop what hyperband stops, start trials; whether any run."""
        sweep, new = self.sweep, False
        for run_id, proc in list(self.live.items()):
            new |= proc.trial.read_metric(self.metric)
            if (code := proc.poll()) is None and proc.trial.state == STOPPED:
                self.agent._command_stop({"run_id": run_id})
            elif code is not None:
                del self.live[run_id]
                self._ended(proc.trial, code)
        if new and "early_terminate" in sweep.config:
            for run in sweeps.stop_runs(sweep.config, [t.engine_run() for t in sweep.trials]):
                trial, lines = self.live[run.name].trial, (run.early_terminate_info or {}).get("lines", [])
                trial.state, trial.note = STOPPED, lines[-1].strip() if lines else "hyperband"
                self.agent._command_stop({"run_id": run.name})  # SIGTERM, as the server's stop command
                sweep.save()
        while len(self.live) < self.jobs:
            trial = next((t for t in sweep.trials if t.state == INTERRUPTED), None)
            if trial is None:
                if self.exhausted or len(sweep.trials) >= sweep.cap or (params := sweep.propose()) is None:
                    self.exhausted = True
                    break
                run_id, index = generate_id(), len(sweep.trials)
                trial = Trial(index, run_id, params, str(sweep.directory / "trials" / f"{index:03d}-{run_id}"))
                Path(trial.out_dir).mkdir(parents=True)
                sweep.trials.append(trial)
            self._start(trial)
        return bool(self.live)

    def run(self) -> None:
        """Run trials until done; on SweepStopped or Ctrl-C stop the running ones, recorded as interrupted."""
        for trial in self.sweep.trials:
            if trial.state == RUNNING:  # the runner was killed under it: it resumes
                trial.state, trial.note = INTERRUPTED, "the runner stopped while it ran"
        try:
            orphans = [t for t in self.sweep.trials if t.state == INTERRUPTED and t.alive]
            for trial in orphans:
                self.say(f"trial {trial.index} still runs from the runner that was stopped (process group "
                         f"{trial.pid}); stopping it before it resumes", style="yellow")
            self._stop(orphans)  # two processes must never write one W&B run
            while self._step():
                time.sleep(POLL_S)
        except (SweepStopped, KeyboardInterrupt) as exc:
            running = [proc.trial for proc in self.live.values()]
            with suppress(KeyboardInterrupt):  # a second Ctrl-C kills at once
                self._stop(running)
            for trial in running:
                trial.exit_code, trial.ended = self.live[trial.run_id].wait(), time.time()
                trial.read_metric(self.metric)
                if trial.state == RUNNING:
                    trial.state, trial.note = INTERRUPTED, str(exc) or "interrupted"
            self.sweep.save()
            raise


def trials_table(sweep: Sweep) -> Table:
    """Trials yet to end first, then the ended ones best first: state, swept parameters, the metric, time."""
    metric, swept, ranked = (sweep.metric or {}).get("name"), sweep.swept(), sweep.ranked()
    style = dict(running="cyan", finished="green", failed="red", stopped="yellow", interrupted="magenta")
    table = Table(title=f"sweep {sweep.name}: {len(ranked)} ended of {'?' if sweep.cap == math.inf else sweep.cap}"
                  + (f", ranked by {metric} ({sweep.metric['goal']})" if metric else ""), title_justify="left")
    for name in ["#", "run", "state", *swept, *([f"{metric} (last)", f"{metric} (best)"] if metric else []), "time"]:
        table.add_column(name, justify="left" if name in ("run", "state") else "right")
    for t in [t for t in sweep.trials if t.state not in ENDED] + ranked:  # Live crops what the terminal can't show
        values = [t.values.get(k) for k in swept] + ([t.summary.get(metric), t.score(sweep.metric)] if metric else [])
        table.add_row(str(t.index), t.run_id, f"[{style.get(t.state, 'dim')}]{t.state}", *map(fmt, values),
                      f"{(t.ended or time.time()) - t.started:.0f}s" if t.started else "-")
    return table


def run_sweep(args: argparse.Namespace) -> int:
    """``launch.py sweep``: start or resume a sweep, show it live, then ranked with the best trial's command."""
    console = report_console(stderr=True)
    say = partial(console.print, highlight=False, soft_wrap=True)
    for flag, value in (("--jobs", args.jobs), ("--count", args.count)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.resume:
        sweep = Sweep.load(args.resume)
        sweep.count, left = args.count or sweep.count, sum(t.state not in ENDED for t in sweep.trials)
        say(f"resuming sweep {sweep.name} in {sweep.directory}: {len(sweep.trials) - left} trials already ended"
            + (f", {left} interrupted go on from their last checkpoint in their own W&B runs" if left else ""))
    elif not args.config:
        raise UsageError("pass a sweep YAML (python launch.py sweep sweeps/weight_decay.yaml) or --resume SWEEP_DIR")
    else:
        config = load_config(args.config, args.param)
        sweep = Sweep.create(config, out=args.out, source=args.config, count=args.count, sweep_id=args.sweep_id,
                             seed=args.seed)
        say(f"sweep {sweep.name} ({config['method']}) in {sweep.directory}" + (
            "; random and bayes never run out: stop with --count N, run_cap or Ctrl-C, go on with --resume"
            if config["method"] != "grid" and sweep.cap == math.inf else ""))
    error, previous = None, signal.signal(signal.SIGTERM, signal.default_int_handler)  # a clean stop on SIGTERM too
    try:
        with Live(get_renderable=lambda: trials_table(sweep), console=console, refresh_per_second=2, transient=True):
            Runner(sweep, jobs=args.jobs, wandb_mode=args.wandb_mode, say=say).run()
    except SweepStopped as exc:
        error = exc
    except KeyboardInterrupt:
        say(f"interrupted; continue with: python launch.py sweep --resume {sweep.directory}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print(trials_table(sweep))
    if best := next((t for t in sweep.ranked() if t.state == FINISHED), None):
        command = best.command[1:] if best.command[:1] == ["/usr/bin/env"] else best.command  # the agent's prefix
        say(f"best: trial {best.index} (run {best.run_id}); reproduce: {shlex.join(command)}")
    say(f"sweep folder: {sweep.directory}   compare: python launch.py compare --sweep {sweep.directory}   "
        f"upload: wandb sync {sweep.directory}/trials/*/wandb/offline-run-*")
    if error:
        say(f"error: {error}", style="red")
    return 1 if error or not best else 0
