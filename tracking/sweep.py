"""W&B sweeps without the W&B server: W&B's ``sweeps`` engine decides, this module runs the trials
as ``wandb agent`` does (``agent_command``'s command and environment; wandb's ``Agent`` stopping
trials and counting failures). A trial reports the sweep's metric as ``[step, value]`` lines in
``$DLHW_SWEEP_METRIC_FILE`` (``core.session`` writes them), read on every poll for hyperband. A trial
the runner was stopped under goes on with ``--resume`` as itself (same run id and folder,
``DLHW_RESUME=auto``), after what a killed runner left of it is stopped (its recorded process group,
checked by start time). Folder: ``sweep.json``; ``trials/NNN-RUNID/`` (``trial.log``, ``metric.jsonl``,
``wandb/``: the trial's ``--out``); ``wandb/sweep-ID/config-RUNID.*`` (the agent's parameter files).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from wandb import env as wandb_env
from wandb.sdk.lib.runid import generate_id
from wandb.wandb_agent import Agent

from dlhw.core.errors import UsageError
from dlhw.core.files import atomic_file
from dlhw.core.session import METRIC_ENV, METRIC_FILE_ENV
from dlhw.tracking import agent_command
from dlhw.tracking.mode import OUT_ENV, RESUME_ENV

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the engine's pydantic-v1 spellings warn at import: W&B's business
    import sweeps
    from sweeps.config.cfg import validator as _schema_validator

STATE_FILE, STATE_VERSION = "sweep.json", 3  # 3: metric rows keyed by the trial's own step
METHODS = ("grid", "random", "bayes")
DOCS = "https://docs.wandb.ai/guides/sweeps/define-sweep-configuration"
# An interrupted trial runs again as itself, so the engine sees it as pending and never re-proposes it.
PENDING, RUNNING, FINISHED, FAILED, STOPPED, INTERRUPTED = (
    "pending", "running", "finished", "failed", "stopped", "interrupted")
_ENGINE_STATE = {PENDING: "pending", RUNNING: "running", FINISHED: "finished", FAILED: "failed",
                 STOPPED: "killed", INTERRUPTED: "pending"}
ENDED = (FINISHED, FAILED, STOPPED)


def parse_param_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=1", "lr=0.1"]`` -> ``{"epochs": 1, "lr": 0.1}`` (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--param {item!r} is not NAME=VALUE; write e.g. --param epochs=1")
        out[name] = yaml.safe_load(value)
    return out


def config_problems(config: Any) -> list[str]:
    """What keeps ``config`` from running: W&B's schema violations (each once, with its key), then
    what the engine refuses, values no command line carries, a missing ``program``."""
    if not isinstance(config, dict):
        return ["the file must hold a mapping of sweep keys (method, metric, parameters, ...)"]
    try:
        located = {e.message: ".".join(map(str, e.absolute_path)) for e in _schema_validator.iter_errors(config)}
        found = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as exc:
        return [str(exc)]
    problems = list(dict.fromkeys(f"{located[m]}: {m}" if located.get(m) else m for m in found))
    if problems:
        return problems
    method = config.get("method")
    if method not in METHODS:
        return [f"method {method!r} cannot run offline; use one of {', '.join(METHODS)}"]
    if method == "bayes" and "metric" not in config:
        problems.append("bayes search needs a `metric` (name and goal) to optimise")
    if "early_terminate" in config and "metric" not in config:
        problems.append("`early_terminate` needs a `metric` to compare trials by")
    for name, spec in config["parameters"].items():  # the agent writes --x=None, and a mapping as its repr
        values = [spec.get("value")] if "value" in spec else spec.get("values", [])
        if "parameters" in spec or any(v is None or isinstance(v, dict) for v in values):
            problems.append(f"parameters.{name}: a None or mapping value reaches the program as the text "
                            f"'--{name}=None' or a dict's repr; give plain values")
    if not problems:
        try:
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
        except Exception as exc:  # the engine reports its refusals as several exception types
            problems.append(str(exc).strip().splitlines()[0])
    program = config.get("program")
    if "program" in agent_command.macros_used(config.get("command")):
        if not program:
            problems.append("the command uses ${program} but the sweep names no `program`")
        elif not Path(program).is_file():
            problems.append(f"program {program!r} is not a file in {Path.cwd()}; wandb agent runs it "
                            "from its working folder, so start the sweep from the folder it expects")
    return problems


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a sweep YAML, pin ``overrides`` as constant parameters, check it as W&B would; a
    broken file is one :class:`UsageError` line naming the file and every problem."""
    path, hint = Path(path), "pass a W&B sweep YAML such as sweeps/weight_decay.yaml"
    if path.is_dir() or not path.is_file():
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
    if isinstance(config, dict) and overrides:
        config.setdefault("parameters", {}).update({k: {"value": v} for k, v in overrides.items()})
    problems = config_problems(config)
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)) if len(problems) > 1 else problems[0]
        raise UsageError(f"{path} is not a valid W&B sweep: {listed}; fix the file (see {DOCS})")
    return config


@dataclass
class Trial:
    """One run of the sweep's program: its parameters, process and the metric it reported."""

    index: int
    run_id: str
    params: dict[str, dict[str, Any]]  # wire form: {"lr": {"value": 0.1}}
    out_dir: str
    command: list[str] = field(default_factory=list)
    state: str = PENDING
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # {"step": the trial's own, metric: value}
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    note: str = ""
    pid: int | None = None  # process group of the latest attempt and its start time: a later runner
    pid_started: int | None = None  # stops an orphan, never a process that got the number since
    resumed: int = 0
    metric_offset: int = 0  # bytes of metric.jsonl read

    log = property(lambda self: Path(self.out_dir) / "trial.log")
    metric_file = property(lambda self: Path(self.out_dir) / "metric.jsonl")
    values = property(lambda self: {k: v["value"] for k, v in self.params.items()})

    def engine_run(self) -> sweeps.SweepRun:  # what the engine knows of a run
        return sweeps.SweepRun(name=self.run_id, state=sweeps.RunState(_ENGINE_STATE[self.state]),
                               config=self.params, history=self.history, summary_metrics=self.summary)

    def score(self, metric: Mapping[str, Any] | None) -> float | None:
        """The trial's best value of the sweep's metric, as the engine ranks it (None if never reported)."""
        try:
            goal = "maximum" if metric["goal"] == "maximize" else "minimum"
            return float(self.engine_run().metric_extremum(metric["name"], goal))
        except (TypeError, ValueError):
            return None

    def read_metric(self, metric: str) -> bool:
        """Take the whole lines appended since the last read (whether any). A resumed attempt reports
        again from its checkpoint on: a step replaces what earlier attempts reported from it on."""
        try:
            with open(self.metric_file, "rb") as fh:
                fh.seek(self.metric_offset)
                data = fh.read()
        except FileNotFoundError:
            return False
        data = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.metric_offset += len(data)
        for step, value in map(json.loads, data.splitlines()):
            self.history = [r for r in self.history if r["step"] < step] + [{"step": step, metric: value}]
        if self.history:
            self.summary = {metric: self.history[-1][metric]}
        return bool(data)


class Sweep:
    """A sweep's config and trials, kept in ``directory/sweep.json`` (written atomically)."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory, self.config, self.name = directory, state["config"], state["name"]
        self.local_id, self.sweep_id = state["local_id"], state.get("sweep_id")
        self.count, self.seed, self.source = state.get("count"), state.get("seed", 0), state.get("source", "")
        names = {f.name for f in fields(Trial)}
        self.trials = [Trial(**{k: v for k, v in t.items() if k in names}) for t in state.get("trials", [])]

    @classmethod
    def create(cls, config: dict[str, Any], *, out: str | Path, source: str, count: int | None,
               sweep_id: str | None = None, seed: int = 0) -> Sweep:
        """A new, empty sweep in ``out/sweeps/NAME-ID``."""
        try:
            agent_command.split_sweep_path(sweep_id) if sweep_id else None
        except ValueError as exc:
            raise UsageError(f"--sweep-id {sweep_id!r}: {exc}") from None
        local_id, name = generate_id(), str(config.get("name") or Path(source).stem)
        directory = Path(out).resolve() / "sweeps" / f"{name}-{local_id}"
        directory.mkdir(parents=True)
        sweep = cls(directory, dict(config=config, name=name, local_id=local_id, sweep_id=sweep_id, count=count,
                                    seed=seed, source=str(source)))
        sweep.save()
        return sweep

    @classmethod
    def load(cls, directory: str | Path) -> Sweep:
        """The sweep kept in ``directory``; a folder without one is a UsageError."""
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
        return cls(directory, state)

    def save(self) -> None:
        state = dict(version=STATE_VERSION, name=self.name, local_id=self.local_id, sweep_id=self.sweep_id,
                     count=self.count, seed=self.seed, source=self.source, config=self.config,
                     trials=[asdict(t) for t in self.trials])
        with atomic_file(self.directory / STATE_FILE) as fh:
            fh.write(json.dumps(state, indent=1, default=str).encode())

    metric = property(lambda self: self.config.get("metric"))

    @property
    def param_dir(self) -> Path:
        sweep = agent_command.split_sweep_path(self.sweep_id)[2] if self.sweep_id else self.local_id
        return self.directory / "wandb" / f"sweep-{sweep}"

    @property  # a random or bayes sweep ends by --count or the YAML's run_cap, whichever comes first
    def cap(self) -> float:
        return min(self.count or math.inf, self.config.get("run_cap") or math.inf)

    def propose(self) -> dict[str, dict[str, Any]] | None:
        """The engine's next parameters (wire form), or None when a grid is exhausted."""
        # random and bayes draw from NumPy's global generator: seeded per trial, repeatable across --resume.
        np.random.seed((self.seed * 100_003 + len(self.trials)) % 2**32)
        run = sweeps.next_run(self.config, [t.engine_run() for t in self.trials])
        # The engine proposes NumPy scalars; the agent gets plain JSON values from the server.
        return None if run is None else json.loads(json.dumps(run.config, default=lambda v: v.item()))

    def ranked(self) -> list[Trial]:
        """Ended trials, best first by the sweep's metric (trials without a value last)."""
        sign = -1.0 if (self.metric or {}).get("goal") == "maximize" else 1.0

        def key(t: Trial) -> tuple[int, float]:
            s = t.score(self.metric)
            return (1, 0.0) if s is None or math.isnan(s) else (0, sign * s)

        return sorted((t for t in self.trials if t.state in ENDED), key=key)

    def swept(self) -> list[str]:
        """Names of the parameters that vary (not pinned to one value)."""
        return [k for k, v in self.config["parameters"].items() if not (isinstance(v, dict) and "value" in v)]


def _started_at(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat[stat.rindex(")") + 2:].split()
    return None if fields_[0] in "ZX" else int(fields_[19])


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class SweepStopped(Exception):
    """The sweep gave up (repeated failures); the message says why."""


class Runner:
    """Runs a :class:`Sweep`'s trials, ``jobs`` at a time. A trial gets the agent's environment plus
    its own folder as ``$DLHW_OUT`` and ``WANDB_DIR``, the W&B mode, the sweep's name as group, the
    metric file and a share of the CPU threads; wandb's ``Agent`` stops trials and counts failures."""

    POLL_S = 0.1

    def __init__(self, sweep: Sweep, *, jobs: int = 1, wandb_mode: str | None = None, view: Any = None) -> None:
        self.sweep, self.jobs, self.wandb_mode, self.view = sweep, jobs, wandb_mode, view
        self.metric = (sweep.metric or {}).get("name")
        had_dir = wandb_env.DIR in os.environ
        self.agent = Agent(api=None, queue=None)  # no server: only its process and failure rules
        if not had_dir:  # it sets WANDB_DIR for the trials it starts; ours get their own
            del os.environ[wandb_env.DIR]
        self.live: dict[str, subprocess.Popen] = {}
        self.exhausted = False

    def _environment(self, trial: Trial) -> tuple[dict[str, str], str]:
        base = dict(os.environ)
        python = agent_command.interpreter(base)
        env = agent_command.trial_environment(
            base, run_id=trial.run_id, params=trial.params,
            param_file=self.sweep.param_dir / f"config-{trial.run_id}.yaml", sweep_id=self.sweep.sweep_id)
        env[OUT_ENV] = env[wandb_env.DIR] = trial.out_dir  # the agent's WANDB_DIR is its working folder
        env.setdefault(wandb_env.RUN_GROUP, self.sweep.name)
        if self.metric:
            env[METRIC_ENV], env[METRIC_FILE_ENV] = self.metric, str(trial.metric_file)
        if self.wandb_mode:
            env[wandb_env.MODE] = self.wandb_mode
        if self.sweep.config.get("project") and not self.sweep.sweep_id:
            env.setdefault(wandb_env.PROJECT, str(self.sweep.config["project"]))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, str(max(1, cpus // self.jobs)))
        return env, python

    def _start(self, trial: Trial) -> None:
        """Start a trial, or an interrupted one again as itself, from its own last checkpoint."""
        resume = trial.state == INTERRUPTED
        env, python = self._environment(trial)
        env.pop(RESUME_ENV, None)  # a new trial starts from nothing, whatever the runner's environment says
        if resume:
            env[RESUME_ENV], env[wandb_env.RESUME] = "auto", "allow"  # "must" fails for an offline-only run
            trial.resumed += 1
        else:
            trial.command = agent_command.trial_command(
                self.sweep.config.get("command"), program=self.sweep.config.get("program"), params=trial.params,
                args_json_file=self.sweep.param_dir / f"config-{trial.run_id}.json", python=python)
        with open(trial.log, "ab") as log:
            if resume:
                log.write(f"\n--- resumed: attempt {trial.resumed + 1} of this trial ({trial.note}) ---\n".encode())
                log.flush()
            try:  # the agent's way: own process group, stdin a pipe closed at once (EOF, never the tty)
                proc = subprocess.Popen(trial.command, env=env, stdin=subprocess.PIPE, stdout=log,
                                        stderr=subprocess.STDOUT, process_group=0)
            except OSError as exc:
                log.write(f"could not start {trial.command}: {exc}\n".encode())
                return self._ended(trial, 127)
        proc.stdin.close()
        proc.last_sigterm_time = None  # what the agent's _command_stop keeps per process
        self.live[trial.run_id] = self.agent._run_processes[trial.run_id] = proc
        trial.state, trial.note, trial.pid, trial.pid_started = RUNNING, "", proc.pid, _started_at(proc.pid)
        trial.started = trial.started or time.time()
        self.sweep.save()
        self._say(f"trial {trial.index} {'resumed in run ' + trial.run_id if resume else 'started'}: "
                  + " ".join(f"{k}={_num(v)}" for k, v in trial.values.items()) + f"  (log: {trial.log})")

    def _stop_orphan(self, trial: Trial) -> None:
        """Stop what a killed runner left of ``trial``: two processes must never write one W&B run."""
        if trial.pid is None or trial.pid_started is None or _started_at(trial.pid) != trial.pid_started:
            return
        self._say(f"trial {trial.index} still runs from the runner that was stopped (process group "
                  f"{trial.pid}); stopping it before it resumes", style="yellow")
        os.kill(trial.pid, signal.SIGTERM)  # the trial alone, as the agent stops it: it finishes its W&B run
        for last in (False, True):
            deadline = time.monotonic() + (10.0 if last else self.agent._kill_delay)
            while _started_at(trial.pid) == trial.pid_started and time.monotonic() < deadline:
                time.sleep(self.POLL_S)
            _killpg(trial.pid, signal.SIGKILL)  # then what it started (W&B's service), or all of it
            if _started_at(trial.pid) != trial.pid_started:
                return
        raise SweepStopped(f"trial {trial.index} (process group {trial.pid}) survives SIGKILL; resuming it "
                           "would make two processes write one W&B run")

    def _poll(self) -> bool:
        """Read new metric lines, resend stops (the agent kills after its delay), end what exited."""
        new = False
        for run_id, proc in list(self.live.items()):
            trial = next(t for t in self.sweep.trials if t.run_id == run_id)
            new |= bool(self.metric) and trial.read_metric(self.metric)
            code = proc.poll()
            if code is None and trial.state == STOPPED:
                self.agent._command_stop({"run_id": run_id})
            elif code is not None:
                del self.live[run_id], self.agent._run_processes[run_id]
                self._ended(trial, code)
        return new

    def _ended(self, trial: Trial, code: int) -> None:
        found = sorted(Path(trial.out_dir).glob(f"wandb/*run-*-{trial.run_id}"), key=lambda p: p.name.split("run-")[1])
        trial.run_dir = str(found[-1]) if found else trial.run_dir
        trial.exit_code, trial.ended = code, time.time()
        if trial.state == STOPPED:
            self._say(f"trial {trial.index} stopped early by hyperband ({trial.note})")
        elif code <= 0:  # killed by a signal is not a failure to the agent either
            trial.state = FINISHED
            score = trial.score(self.sweep.metric)
            self._say(f"trial {trial.index} finished" + (f"  {self.metric}={score:.4g}" if score is not None else ""))
        else:
            trial.state, trial.note = FAILED, f"exit code {code}; log: {trial.log}"
            self._say(f"trial {trial.index} failed ({trial.note})", style="red")
        self.sweep.save()
        agent = self.agent  # as Agent._run_loop counts an ended run
        if code > 0:
            agent._failed += 1
            why = (f"{agent._failed} trials failed within the first {agent.FLAPPING_MAX_SECONDS} s, so the sweep "
                   "stops (as wandb agent does; WANDB_AGENT_DISABLE_FLAPPING=true keeps going)" if agent.is_flapping()
                   else f"{agent._failed} trials failed and {agent._finished} ended, so the sweep stops (as wandb "
                   "agent does; WANDB_AGENT_MAX_INITIAL_FAILURES raises the limit)" if agent.is_failing() else "")
            if why:
                raise SweepStopped(f"{why}; see the last log: {trial.log}")
        agent._finished += 1

    def _early_terminate(self) -> None:
        stop = sweeps.stop_runs(self.sweep.config, [t.engine_run() for t in self.sweep.trials])
        for run in stop:
            trial = next(t for t in self.sweep.trials if t.run_id == run.name)
            if trial.state == RUNNING and run.name in self.live:
                lines = (run.early_terminate_info or {}).get("lines", [])
                trial.state, trial.note = STOPPED, lines[-1].strip() if lines else "hyperband"
                self.agent._command_stop({"run_id": run.name})  # SIGTERM, as the server's stop command
                self.sweep.save()

    def _fill(self) -> None:
        while len(self.live) < self.jobs:
            waiting = next((t for t in self.sweep.trials if t.state == INTERRUPTED), None)
            if waiting is None and (self.exhausted or len(self.sweep.trials) >= self.sweep.cap):
                return
            if waiting is None:
                params = self.sweep.propose()
                if params is None:
                    self.exhausted = True
                    return
                run_id = generate_id()
                out_dir = self.sweep.directory / "trials" / f"{len(self.sweep.trials):03d}-{run_id}"
                out_dir.mkdir(parents=True)
                waiting = Trial(index=len(self.sweep.trials), run_id=run_id, params=params, out_dir=str(out_dir))
                self.sweep.trials.append(waiting)
            self._start(waiting)

    def _interrupt_all(self, note: str) -> None:
        """Stop every running trial (SIGTERM, then SIGKILL after the kill delay or a second Ctrl-C)."""
        for proc in self.live.values():
            proc.terminate()
        deadline = time.monotonic() + self.agent._kill_delay
        for run_id, proc in self.live.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                deadline = 0.0  # the rest are killed at once too
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            trial = next(t for t in self.sweep.trials if t.run_id == run_id)
            if self.metric:
                trial.read_metric(self.metric)
            trial.exit_code, trial.ended = proc.returncode, time.time()
            if trial.state == RUNNING:
                trial.state, trial.note = INTERRUPTED, note
        self.live.clear()
        self.sweep.save()

    def run(self) -> None:
        """Run trials until done; on :class:`SweepStopped` or KeyboardInterrupt stop and record the running ones."""
        for trial in self.sweep.trials:
            if trial.state in (RUNNING, PENDING):  # the runner was killed under it: it resumes
                trial.state, trial.note = INTERRUPTED, "the runner stopped while it ran"
        self.sweep.save()
        try:
            for trial in self.sweep.trials:
                if trial.state == INTERRUPTED:
                    self._stop_orphan(trial)
            while True:
                if self._poll() and "early_terminate" in self.sweep.config:
                    self._early_terminate()
                self._fill()
                if not self.live:
                    return
                time.sleep(self.POLL_S)
        except (SweepStopped, KeyboardInterrupt) as exc:
            self._interrupt_all("the sweep gave up" if isinstance(exc, SweepStopped) else "interrupted")
            raise

    def _say(self, message: str, style: str | None = None) -> None:
        if self.view is not None:
            self.view.say(message, style)


def _num(v: Any) -> str:  # a table cell
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def reproduce_command(trial: Trial) -> str:
    """The shell command that runs ``trial`` again (the agent's ``/usr/bin/env`` prefix dropped)."""
    import shlex

    return shlex.join(trial.command[1:] if trial.command[:1] == ["/usr/bin/env"] else trial.command)
