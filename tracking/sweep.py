"""W&B sweeps without the W&B server: the sweeps engine decides, this module runs the trials.

W&B's sweep controller lives in the cloud; its search and early-stopping logic is the open-source
``sweeps`` package (``next_run``, ``stop_runs``, schema validation), which W&B's own local
controller uses. :class:`Sweep` keeps the trials of one sweep in a folder (``sweep.json``, written
atomically after every change) and asks the engine for the next parameters; :class:`Runner`
starts each trial as ``wandb agent`` would (``tracking.agent_command``), K at a time, reads the
metric the trial logs while it runs (``wandb leet inspect --follow``), and lets hyperband stop
the laggards.

A trial the runner was stopped under (Ctrl-C, SIGTERM, or the runner killed outright) is not
re-proposed: ``--resume`` starts it again as itself, with the same run id and folder,
``DLHW_RESUME=auto`` (continue from its own last checkpoint) and ``WANDB_RESUME=allow``, so it goes
on in the same W&B run. A trial process that outlived a killed runner is stopped first, so that
two processes never write one run.

Layout of a sweep folder::

    sweep.json                      the sweep's config and every trial's state
    trials/NNN-RUNID/trial.log      a trial's stdout and stderr (a resumed trial's attempts appended)
    trials/NNN-RUNID/wandb/...      its W&B run (the trial's --out, via $DLHW_OUT)
    wandb/offline-run-*             links to every trial's run folders (one per attempt, one run id):
                                    `wandb leet SWEEP/wandb`; `wandb sync` joins a run's folders
    wandb/sweep-ID/config-RUNID.*   the parameter files the agent would write
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from wandb import env as wandb_env
from wandb.sdk.lib.runid import generate_id
from wandb.wandb_agent import Agent

from dlhw.core.errors import UsageError
from dlhw.core.files import atomic_file
from dlhw.tracking import agent_command
from dlhw.tracking.mode import OUT_ENV, RESUME_ENV
from dlhw.tracking.readback import follow, history, stop_follower

with warnings.catch_warnings():
    # The engine's SweepRun still uses pydantic-v1 config spellings; those warnings are W&B's
    # business, not the user's, and only its import raises them.
    warnings.simplefilter("ignore")
    import sweeps
    from sweeps.config.cfg import validator as _schema_validator

STATE_FILE = "sweep.json"
# 2: interrupted trials are resumed as themselves (pid, resumed, earlier_run_dirs per trial).
STATE_VERSION = 2
METHODS = ("grid", "random", "bayes")
DOCS = "https://docs.wandb.ai/guides/sweeps/define-sweep-configuration"

# Trial states. The engine knows a stopped trial as "killed"; an interrupted one (the runner was
# stopped under it) will run again as itself, so the engine sees it as pending and never
# proposes its point a second time.
PENDING, RUNNING, FINISHED, FAILED, STOPPED, INTERRUPTED = (
    "pending", "running", "finished", "failed", "stopped", "interrupted")
_ENGINE_STATE = {PENDING: sweeps.RunState.pending, RUNNING: sweeps.RunState.running,
                 FINISHED: sweeps.RunState.finished, FAILED: sweeps.RunState.failed,
                 STOPPED: sweeps.RunState.killed, INTERRUPTED: sweeps.RunState.pending}
ENDED = (FINISHED, FAILED, STOPPED)


# -- the sweep config ---------------------------------------------------------------------------

def parse_param_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=1", "lr=0.1"]`` -> ``{"epochs": 1, "lr": 0.1}`` (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--param {item!r} is not NAME=VALUE; write e.g. --param epochs=1")
        out[name] = yaml.safe_load(value)
    return out


def _schema_problems(config: dict[str, Any]) -> list[str]:
    """W&B's schema violations, each once, prefixed with the key it is about (``metric.goal: ...``):
    the engine's own messages name the bad value but not where it stands."""
    located: dict[str, str] = {}
    for error in _schema_validator.iter_errors(config):
        where = ".".join(map(str, error.absolute_path))
        located.setdefault(error.message, f"{where}: {error.message}" if where else error.message)
    problems: list[str] = []
    for message in sweeps.schema_violations_from_proposed_config(config):
        problem = located.get(message, message)
        if problem not in problems:
            problems.append(problem)
    return problems


def config_problems(config: Any) -> list[str]:
    """Everything that keeps ``config`` from running: W&B's schema violations first, then what
    the engine itself refuses (an unknown method, grid over a continuous range, no metric for bayes
    or hyperband), then a missing ``program``."""
    if not isinstance(config, dict):
        return ["the file must hold a mapping of sweep keys (method, metric, parameters, ...)"]
    try:
        problems = _schema_problems(config)
    except ValueError as exc:
        return [str(exc)]
    if problems:
        return problems
    method = config.get("method")
    if method not in METHODS:
        return [f"method {method!r} cannot run offline; use one of {', '.join(METHODS)}"]
    if method == "bayes" and "metric" not in config:
        problems.append("bayes search needs a `metric` (name and goal) to optimise")
    if "early_terminate" in config and "metric" not in config:
        problems.append("`early_terminate` needs a `metric` to compare trials by")
    if not problems:
        try:
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
        except Exception as exc:  # the engine reports its refusals as several exception types
            problems.append(str(exc).strip().splitlines()[0])
    if "program" in agent_command.macros_used(config.get("command")):
        program = config.get("program")
        if not program:
            problems.append("the command uses ${program} but the sweep names no `program`")
        elif not Path(program).is_file():
            problems.append(f"program {program!r} is not a file in {Path.cwd()}; wandb agent runs it "
                            "from its working folder, so start the sweep from the folder it expects")
    return problems


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a sweep YAML, pin ``overrides`` as constant parameters, and check it as W&B would.

    A broken file raises :class:`UsageError`: one line naming the file and every problem, numbered.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; pass a W&B sweep YAML such as sweeps/weight_decay.yaml")
    if not path.is_file():
        raise UsageError(f"sweep file not found: {path}; pass a W&B sweep YAML such as sweeps/weight_decay.yaml")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a text file (byte {exc.start} is not UTF-8); "
                         "pass a W&B sweep YAML such as sweeps/weight_decay.yaml") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = (f" ({exc.context} from line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark else "")
        raise UsageError(f"{path} is not valid YAML{where}: {exc.problem}{context}; fix the file there") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {' '.join(str(exc).split())}; fix the file") from None
    if isinstance(config, dict) and overrides:
        config.setdefault("parameters", {})
        for name, value in overrides.items():
            config["parameters"][name] = {"value": value}
    problems = config_problems(config)
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)) if len(problems) > 1 else problems[0]
        raise UsageError(f"{path} is not a valid W&B sweep: {listed}; fix the file (see {DOCS})")
    return config


# -- state --------------------------------------------------------------------------------------

@dataclass
class Trial:
    """One run of the sweep's program: its parameters, process outcome and logged metric."""

    index: int
    run_id: str
    params: dict[str, dict[str, Any]]  # wire form: {"lr": {"value": 0.1}}
    out_dir: str
    command: list[str] = field(default_factory=list)
    state: str = PENDING
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # rows that logged the metric, with _step
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None  # the W&B run folder of the latest attempt
    note: str = ""
    pid: int | None = None  # process group of the latest attempt, so a later runner can stop an orphan
    resumed: int = 0  # how often it was started again after an interruption
    earlier_run_dirs: list[str] = field(default_factory=list)  # folders of earlier attempts, same run id

    @property
    def log(self) -> Path:
        return Path(self.out_dir) / "trial.log"

    @property
    def values(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.params.items()}

    def engine_run(self) -> sweeps.SweepRun:
        return sweeps.SweepRun(name=self.run_id, state=_ENGINE_STATE[self.state], config=self.params,
                               history=self.history, summary_metrics=self.summary)

    def score(self, metric: Mapping[str, Any] | None) -> float | None:
        """The trial's best value of the sweep's metric, as the engine ranks it (None if never logged)."""
        if not metric:
            return None
        goal = "maximum" if metric.get("goal") == "maximize" else "minimum"
        try:
            return float(self.engine_run().metric_extremum(metric["name"], goal))
        except ValueError:
            return None


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_file(path) as fh:
        fh.write(json.dumps(data, indent=1, default=str).encode())


class Sweep:
    """A sweep's config and trials, kept in ``directory/sweep.json``."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self.config: dict[str, Any] = state["config"]
        self.name: str = state["name"]
        self.local_id: str = state["local_id"]
        self.sweep_id: str | None = state.get("sweep_id")
        self.count: int | None = state.get("count")
        self.seed: int = state.get("seed", 0)
        self.source: str = state.get("source", "")
        self.created: float = state.get("created", time.time())
        self.trials = [Trial(**t) for t in state.get("trials", [])]

    @classmethod
    def create(cls, config: dict[str, Any], *, out: str | Path, source: str, count: int | None,
               sweep_id: str | None = None, seed: int = 0) -> Sweep:
        """A new, empty sweep in ``out/sweeps/NAME-ID``."""
        if sweep_id:
            try:
                agent_command.split_sweep_path(sweep_id)
            except ValueError as exc:
                raise UsageError(f"--sweep-id {sweep_id!r}: {exc}") from None
        local_id = generate_id()
        name = str(config.get("name") or Path(source).stem)
        directory = Path(out).resolve() / "sweeps" / f"{name}-{local_id}"
        directory.mkdir(parents=True)
        sweep = cls(directory, dict(config=config, name=name, local_id=local_id, sweep_id=sweep_id,
                                    count=count, seed=seed, source=str(source)))
        sweep.save()
        return sweep

    @classmethod
    def load(cls, directory: str | Path) -> Sweep:
        """The sweep kept in ``directory``; a folder without one is a UsageError."""
        directory = Path(directory).resolve()
        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise UsageError(f"{directory} holds no sweep ({STATE_FILE} missing or unreadable); "
                             "pass the folder `launch.py sweep` printed when it started") from None
        if not isinstance(state, dict) or "config" not in state:
            raise UsageError(f"{directory / STATE_FILE} is not a sweep's state; pass the folder `launch.py sweep` "
                             "printed when it started")
        if state.get("version", 1) > STATE_VERSION:
            raise UsageError(f"{directory / STATE_FILE} was written by a newer version of this suite (format "
                             f"{state['version']}, this one reads up to {STATE_VERSION}); resume it with that version")
        return cls(directory, state)

    def save(self) -> None:
        """Write the state atomically: a crash leaves the previous state or the new one."""
        state = dict(version=STATE_VERSION, name=self.name, local_id=self.local_id, sweep_id=self.sweep_id,
                     count=self.count, seed=self.seed, source=self.source, created=self.created,
                     config=self.config, trials=[asdict(t) for t in self.trials])
        _write_json_atomic(self.directory / STATE_FILE, state)

    @property
    def metric(self) -> dict[str, Any] | None:
        return self.config.get("metric")

    @property
    def param_dir(self) -> Path:
        sweep = agent_command.split_sweep_path(self.sweep_id)[2] if self.sweep_id else self.local_id
        return self.directory / "wandb" / f"sweep-{sweep}"

    def engine_runs(self) -> list[sweeps.SweepRun]:
        return [t.engine_run() for t in self.trials]

    def counted(self) -> int:
        """Trials that use up ``count``: every trial that started (an interrupted one resumes, it is
        not a new trial)."""
        return len(self.trials)

    def propose(self) -> dict[str, dict[str, Any]] | None:
        """The engine's next parameters (wire form), or None when a grid is exhausted."""
        # random and bayes draw from NumPy's global generator; seeding it per trial index makes a
        # sweep repeatable, also across --resume.
        np.random.seed((self.seed * 100_003 + len(self.trials)) % 2**32)
        run = sweeps.next_run(self.config, self.engine_runs())
        # The engine proposes NumPy scalars; the agent gets plain JSON values from the server.
        return None if run is None else json.loads(json.dumps(run.config, default=lambda v: v.item()))

    def ranked(self) -> list[Trial]:
        """Ended trials, best first by the sweep's metric (trials without a value last)."""
        ended = [t for t in self.trials if t.state in ENDED]
        if not self.metric:
            return ended
        sign = -1.0 if self.metric.get("goal") == "maximize" else 1.0

        def key(t: Trial) -> tuple[int, float]:
            s = t.score(self.metric)
            return (1, 0.0) if s is None or math.isnan(s) else (0, sign * s)

        return sorted(ended, key=key)

    def swept(self) -> list[str]:
        """Names of the parameters that vary (not pinned to one value)."""
        return [k for k, v in self.config["parameters"].items() if not (isinstance(v, dict) and "value" in v)]


# -- running trials -----------------------------------------------------------------------------

def merge_history(earlier: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed attempt's rows replace the earlier attempts' rows from its first step on.

    An attempt resumes from its last checkpoint, which may be older than the last row an earlier
    attempt logged; the rows it logs again are the run's history from there, so each step counts
    once, as in the W&B run.
    """
    if not rows:
        return list(earlier)
    first = rows[0].get("_step", 0)
    return [r for r in earlier if r.get("_step", -1) < first] + list(rows)


def metric_rows(run_dir: str | Path, metric: str) -> list[dict[str, Any]]:
    """``{"_step": ..., metric: ...}`` for every row of the run in ``run_dir`` that logged ``metric``."""
    logged = [item for item in history(run_dir) if metric in item]
    return [{"_step": item.get("_step", i), metric: item[metric]} for i, item in enumerate(logged)]


class _Live:
    """A running trial: its process and the follower that reads its W&B run while it runs."""

    def __init__(self, trial: Trial, proc: subprocess.Popen, metric: str | None) -> None:
        self.trial = trial
        self.proc = proc
        self.metric = metric
        self.follower: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None
        self.earlier = list(trial.history)  # what earlier attempts of a resumed trial logged
        self.rows: list[dict[str, Any]] = []
        self.seen = 0  # rows already handed to the trial's history
        self.summary: dict[str, Any] = {}
        self.stop_sent: float | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        return merge_history(self.earlier, self.rows)

    def start_follower(self, run_dir: Path) -> None:
        self.follower = follow(run_dir)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.follower is not None and self.follower.stdout is not None
        for line in self.follower.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            kind = record.get("type")
            if kind == "history":
                item = record["history"].get("item", {})
                if self.metric in item:
                    self.rows.append({"_step": item.get("_step", len(self.rows)), self.metric: item[self.metric]})
            elif kind == "summary":
                self.summary.update(record["summary"].get("update", {}))

    def close_follower(self, grace_s: float) -> None:
        """Let the follower reach the run's exit record, then stop it (a crashed run has none)."""
        if self.follower is None:
            return
        try:
            self.follower.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        stop_follower(self.follower)  # also when it ended: what it started may still read
        if self.reader is not None:
            self.reader.join(timeout=5)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_processes(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run.

    On Linux they are read from ``/proc``, zombies left out: a dead orphan may wait for a reaper
    that never comes in a container. Elsewhere the group's existence is all there is to go by.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def trial_processes(pgid: int, run_id: str) -> list[int]:
    """The processes of group ``pgid`` that still run trial ``run_id`` (found after a runner died).

    Only processes whose environment carries the trial's ``WANDB_RUN_ID`` count, so a group id the
    system has since given to someone else is never signalled (where ``/proc`` exists to tell).
    """
    members = group_processes(pgid)
    if not Path("/proc").is_dir():
        return members
    marker = f"{wandb_env.RUN_ID}={run_id}".encode()
    found = []
    for pid in members:
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


class SweepStopped(Exception):
    """The sweep gave up (repeated failures); the message says why."""


class Runner:
    """Runs a :class:`Sweep`'s trials, ``jobs`` at a time, until the engine or ``count`` says stop.

    Trials get the environment ``wandb agent`` gives them plus: ``$DLHW_OUT`` and ``WANDB_DIR``
    pointing at their own folder, the W&B mode, the sweep's name as W&B group, and an equal
    share of the CPU threads (``OMP_NUM_THREADS``) so K parallel trials do not oversubscribe.
    A trial is stopped with SIGINT (Python finishes its W&B run cleanly), then SIGKILL after
    ``WANDB_AGENT_KILL_DELAY`` seconds, as the agent escalates.
    """

    POLL_S = 0.1
    FLUSH_S = 1.0

    def __init__(self, sweep: Sweep, *, jobs: int = 1, wandb_mode: str | None = None,
                 view: Any = None) -> None:
        self.sweep = sweep
        self.jobs = jobs
        self.wandb_mode = wandb_mode
        self.view = view
        self.live: dict[str, _Live] = {}
        self.kill_delay = wandb_env.get_agent_kill_delay(Agent.KILL_DELAY)
        self.max_initial_failures = wandb_env.get_agent_max_initial_failures(Agent.MAX_INITIAL_FAILURES)
        self.started = time.time()
        self.failed = 0
        self.finished = 0
        self.exhausted = False
        self._new_metrics = False

    # -- environment ---------------------------------------------------------------------------
    def _threads(self) -> int:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // self.jobs)

    def _environment(self, trial: Trial) -> tuple[dict[str, str], str]:
        base = dict(os.environ)
        python = agent_command.interpreter(base)
        env = agent_command.trial_environment(
            base, run_id=trial.run_id, params=trial.params,
            param_file=self.sweep.param_dir / f"config-{trial.run_id}.yaml", sweep_id=self.sweep.sweep_id)
        env[OUT_ENV] = trial.out_dir
        env[wandb_env.DIR] = trial.out_dir
        env.setdefault(wandb_env.RUN_GROUP, self.sweep.name)
        env.setdefault(wandb_env.JOB_TYPE, "sweep-trial")
        if self.wandb_mode:
            env[wandb_env.MODE] = self.wandb_mode
        if self.sweep.config.get("project") and not self.sweep.sweep_id:
            env.setdefault(wandb_env.PROJECT, str(self.sweep.config["project"]))
        # W&B flushes a run's .wandb file every 15 s by default; hyperband and the live table read
        # that file, so trials flush it every second (a user's own setting wins).
        env.setdefault("WANDB__TRANSACTION_LOG_FLUSH_INTERVAL", str(self.FLUSH_S))
        threads = str(self._threads())
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, threads)
        return env, python

    # -- lifecycle -----------------------------------------------------------------------------
    def _launch(self, params: dict[str, dict[str, Any]]) -> None:
        index = len(self.sweep.trials)
        run_id = generate_id()
        out_dir = self.sweep.directory / "trials" / f"{index:03d}-{run_id}"
        out_dir.mkdir(parents=True)
        self.sweep.trials.append(Trial(index=index, run_id=run_id, params=params, out_dir=str(out_dir)))
        self._start(self.sweep.trials[-1])

    def _start(self, trial: Trial) -> None:
        """Start a new trial's process, or an interrupted trial's again as itself: same run id,
        folder and command, told to continue from its own last checkpoint in the same W&B run."""
        resume = trial.state == INTERRUPTED
        env, python = self._environment(trial)
        if resume:
            env[RESUME_ENV] = "auto"
            env[wandb_env.RESUME] = "allow"  # "must" fails for a run that only exists offline
            trial.resumed += 1
            self._earlier_attempts(trial)
            trial.run_dir, trial.exit_code, trial.ended = None, None, None
            header = f"\n--- resumed: attempt {trial.resumed + 1} of this trial ({trial.note}) ---\n"
            trial.note = ""
        else:
            # A new trial starts from nothing, whatever the runner's own environment asks for.
            env.pop(RESUME_ENV, None)
            header = ""
        if not (resume and trial.command):  # a resumed trial runs the command its first attempt ran
            trial.command = agent_command.trial_command(
                self.sweep.config.get("command"), program=self.sweep.config.get("program"), params=trial.params,
                args_json_file=self.sweep.param_dir / f"config-{trial.run_id}.json", python=python)
        # Own process group (as the agent does): stopping a trial reaches its workers too.
        group = dict(process_group=0) if sys.version_info >= (3, 11) else dict(preexec_fn=os.setpgrp)
        with open(trial.log, "ab" if resume else "wb") as log:
            log.write(header.encode())
            log.flush()
            try:
                proc = subprocess.Popen(trial.command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, **group)
            except OSError as exc:
                log.write(f"could not start {shlex.join(trial.command)}: {exc}\n".encode())
                proc = None
        trial.started = trial.started or time.time()
        if proc is None:
            self._ended(trial, 127)
            return
        trial.state, trial.pid = RUNNING, proc.pid
        self.live[trial.run_id] = _Live(trial, proc, (self.sweep.metric or {}).get("name"))
        self.sweep.save()
        what = f"resumed in run {trial.run_id}" if resume else "started"
        self._say(f"trial {trial.index} {what}: {_fmt_params(trial.values)}  (log: {trial.log})")

    def _run_dirs(self, trial: Trial) -> list[Path]:
        """The trial's W&B run folders that hold a run, oldest first (one per attempt)."""
        found = [c for c in Path(trial.out_dir).glob(f"wandb/*run-*-{trial.run_id}")
                 if (c / f"run-{trial.run_id}.wandb").exists()]
        return sorted(found, key=lambda c: c.name.split("run-", 1)[1])  # by start time, offline or not

    def _link(self, run_dir: Path) -> None:
        link = self.sweep.directory / "wandb" / run_dir.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(run_dir)

    def _earlier_attempts(self, trial: Trial) -> None:
        """Before a trial resumes: record (and link) every run folder its attempts left, also one a
        killed runner never saw, and rebuild its metric rows from them, since a killed runner may
        have read rows it never saved."""
        earlier = self._run_dirs(trial)
        trial.earlier_run_dirs = [str(d) for d in earlier]
        for run_dir in earlier:
            self._link(run_dir)
        metric = (self.sweep.metric or {}).get("name")
        if not metric or not earlier:
            return
        rows: list[dict[str, Any]] = []
        try:
            for run_dir in earlier:
                rows = merge_history(rows, metric_rows(run_dir, metric))
        except RuntimeError:
            return  # an unreadable folder: keep the rows sweep.json has
        trial.history = rows

    def _stop_orphan(self, trial: Trial) -> None:
        """Stop what still runs of a trial whose runner was killed, before it runs again: SIGINT
        (it checkpoints and closes its W&B run), SIGKILL after the kill delay."""
        if trial.pid is None or not trial_processes(trial.pid, trial.run_id):
            return
        self._say(f"trial {trial.index} still runs from the runner that was stopped (process group "
                  f"{trial.pid}); stopping it before it resumes", style="yellow")
        _signal_group(trial.pid, signal.SIGINT)
        for sig, wait_s in ((signal.SIGKILL, self.kill_delay), (None, 10.0)):
            deadline = time.monotonic() + wait_s
            while trial_processes(trial.pid, trial.run_id) and time.monotonic() < deadline:
                time.sleep(self.POLL_S)
            if not trial_processes(trial.pid, trial.run_id):
                return
            if sig is not None:
                _signal_group(trial.pid, sig)
        raise SweepStopped(f"trial {trial.index}'s processes (group {trial.pid}) survive SIGKILL; resuming it "
                           "would make two processes write one W&B run")

    def _find_run(self, live: _Live) -> None:
        trial = live.trial
        for candidate in self._run_dirs(trial):
            if str(candidate) not in trial.earlier_run_dirs:  # a resumed attempt writes a new folder
                trial.run_dir = str(candidate)
                self._link(candidate)
                if live.metric:
                    live.start_follower(candidate)
                self.sweep.save()
                return

    def _poll(self) -> None:
        for run_id, live in list(self.live.items()):
            trial = live.trial
            if trial.run_dir is None:
                self._find_run(live)
            if len(live.rows) > live.seen:
                live.seen = len(live.rows)
                trial.history = live.history
                self._new_metrics = True
            code = live.proc.poll()
            if code is None:
                if live.stop_sent and time.time() - live.stop_sent > self.kill_delay:
                    _signal_group(live.proc.pid, signal.SIGKILL)
                continue
            if trial.run_dir is None:
                self._find_run(live)
            live.close_follower(grace_s=5)
            if live.metric and trial.run_dir is not None:
                # The run's file is whole now: read it to its end, which a follower cut short on
                # a busy machine may not have reached.
                try:
                    live.rows = metric_rows(trial.run_dir, live.metric)
                except RuntimeError:
                    pass  # keep what the follower read
            trial.history = live.history
            trial.summary = {k: v for k, v in live.summary.items() if not k.startswith("_")}
            del self.live[run_id]
            self._ended(trial, code)

    def _ended(self, trial: Trial, code: int) -> None:
        trial.exit_code = code
        trial.ended = time.time()
        if trial.state == STOPPED:
            self._say(f"trial {trial.index} stopped early by hyperband ({trial.note})")
        elif code == 0:
            trial.state = FINISHED
            self.finished += 1
            score = trial.score(self.sweep.metric)
            shown = f"  {self.sweep.metric['name']}={score:.4g}" if score is not None else ""
            self._say(f"trial {trial.index} finished{shown}")
        else:
            trial.state = FAILED
            self.failed += 1
            trial.note = f"exit code {code}; log: {trial.log}"
            self._say(f"trial {trial.index} failed ({trial.note})", style="red")
        self.sweep.save()
        self._check_failures(trial)

    def _check_failures(self, trial: Trial) -> None:
        """Give up as ``wandb agent`` does: too many failures early on, or failing more than finishing."""
        if trial.state != FAILED:
            return
        flapping = (os.getenv(wandb_env.AGENT_DISABLE_FLAPPING) != "true"
                    and time.time() < self.started + Agent.FLAPPING_MAX_SECONDS
                    and self.failed >= Agent.FLAPPING_MAX_FAILURES)
        if flapping:
            raise SweepStopped(
                f"{self.failed} trials failed within the first {Agent.FLAPPING_MAX_SECONDS} s, so the sweep "
                f"stops (as wandb agent does; WANDB_AGENT_DISABLE_FLAPPING=true keeps going); "
                f"see the last log: {trial.log}")
        if self.failed >= self.finished and self.failed >= self.max_initial_failures:
            raise SweepStopped(
                f"{self.failed} trials failed and {self.finished} finished, so the sweep stops (as wandb agent "
                f"does; WANDB_AGENT_MAX_INITIAL_FAILURES raises the limit); see the last log: {trial.log}")

    def _early_terminate(self) -> None:
        if "early_terminate" not in self.sweep.config or not self._new_metrics:
            return
        self._new_metrics = False
        running = {t.run_id for t in self.sweep.trials if t.state == RUNNING}
        if not running:
            return
        runs = self.sweep.engine_runs()
        for run in sweeps.stop_runs(self.sweep.config, runs):
            live = self.live.get(run.name)
            if run.name not in running or live is None:
                continue
            trial = live.trial
            trial.state = STOPPED
            lines = (run.early_terminate_info or {}).get("lines", [])
            trial.note = lines[-1].strip() if lines else "hyperband"
            live.stop_sent = time.time()
            _signal_group(live.proc.pid, signal.SIGINT)
            self.sweep.save()

    def _budget_left(self) -> bool:
        return self.sweep.count is None or self.sweep.counted() < self.sweep.count

    def _fill(self) -> None:
        while len(self.live) < self.jobs:
            waiting = next((t for t in self.sweep.trials if t.state == INTERRUPTED), None)
            if waiting is not None:  # interrupted trials go on before anything new starts
                self._start(waiting)
                continue
            if self.exhausted or not self._budget_left():
                return
            params = self.sweep.propose()
            if params is None:
                self.exhausted = True
                return
            self._launch(params)

    def _interrupt_all(self, note: str) -> None:
        """Stop every running trial (SIGINT, then SIGKILL after the kill delay or a second Ctrl-C)
        and record it."""
        for live in self.live.values():
            _signal_group(live.proc.pid, signal.SIGINT)
        deadline = time.time() + self.kill_delay
        for live in self.live.values():
            try:
                live.proc.wait(timeout=max(0.1, deadline - time.time()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                deadline = 0.0  # the rest are killed at once too
                _signal_group(live.proc.pid, signal.SIGKILL)
                live.proc.wait()
            live.close_follower(grace_s=2)
            trial = live.trial
            trial.history = live.history
            trial.exit_code, trial.ended = live.proc.returncode, time.time()
            if trial.state == RUNNING:
                trial.state, trial.note = INTERRUPTED, note
        self.live.clear()
        self.sweep.save()

    def run(self) -> None:
        """Run trials until done. Raises :class:`SweepStopped` after repeated failures and
        re-raises KeyboardInterrupt, in both cases after stopping and recording running trials."""
        for trial in self.sweep.trials:
            if trial.state in (RUNNING, PENDING):  # the runner was killed under it: resume it
                trial.state, trial.note = INTERRUPTED, "the runner stopped while it ran"
        self.sweep.save()
        try:
            for trial in self.sweep.trials:
                if trial.state == INTERRUPTED:
                    self._stop_orphan(trial)
            while True:
                self._poll()
                self._early_terminate()
                self._fill()
                if not self.live:
                    return
                time.sleep(self.POLL_S)
        except SweepStopped:
            self._interrupt_all("the sweep stopped after repeated failures")
            raise
        except KeyboardInterrupt:
            self._interrupt_all("interrupted; --resume continues it")
            raise

    def _say(self, message: str, style: str | None = None) -> None:
        if self.view is not None:
            self.view.say(message, style)


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_params(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in values.items())


def reproduce_command(trial: Trial) -> str:
    """The shell command that runs ``trial`` again (the agent's ``/usr/bin/env`` prefix dropped)."""
    argv = trial.command[1:] if trial.command[:1] == ["/usr/bin/env"] else trial.command
    return shlex.join(argv)
