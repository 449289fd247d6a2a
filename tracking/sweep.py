"""W&B sweeps without the W&B server: W&B's ``sweeps`` engine proposes and stops trials, run as ``wandb agent``
runs them. Folder: ``sweep.json``, ``trials/NNN-RUNID/`` (``trial.log``, ``metric.jsonl``, ``wandb/``)."""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from wandb import env as wandb_env
from wandb.sdk.lib.runid import generate_id
from wandb.wandb_agent import Agent

from dlhw.callbacks.progress import fmt
from dlhw.core.errors import UsageError
from dlhw.core.files import atomic_file
from dlhw.core.session import METRIC_ENV, METRIC_FILE_ENV
from dlhw.tracking import agent_command
from dlhw.tracking.mode import OUT_ENV, RESUME_ENV

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the engine's pydantic-v1 spellings warn at import
    import sweeps
    from sweeps.config.cfg import validator as _schema_validator

STATE_FILE, STATE_VERSION = "sweep.json", 3  # 3: metric rows keyed by the trial's own step
METHODS, DOCS = ("grid", "random", "bayes"), "https://docs.wandb.ai/guides/sweeps/define-sweep-configuration"
PENDING, RUNNING, FINISHED, FAILED, STOPPED, INTERRUPTED = (
    "pending", "running", "finished", "failed", "stopped", "interrupted")
ENDED = (FINISHED, FAILED, STOPPED)
_ENGINE_STATE = {STOPPED: "killed", INTERRUPTED: "pending"}  # an interrupted trial runs again as itself


def parse_param_overrides(items: list[str]) -> dict[str, Any]:
    """``["epochs=1", "lr=0.1"]`` -> ``{"epochs": 1, "lr": 0.1}`` (values read as YAML scalars)."""
    for item in items:
        if not item.partition("=")[0] or "=" not in item:
            raise UsageError(f"--param {item!r} is not NAME=VALUE; write e.g. --param epochs=1")
    return {name: yaml.safe_load(value) for name, _, value in (item.partition("=") for item in items)}


def config_problems(config: Any) -> list[str]:
    """What keeps ``config`` from running: W&B's schema violations (once each, keyed), else the engine's refusals."""
    if not isinstance(config, dict):
        return ["the file must hold a mapping of sweep keys (method, metric, parameters, ...)"]
    try:
        located = {e.message: ".".join(map(str, e.absolute_path)) for e in _schema_validator.iter_errors(config)}
        found = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as exc:
        return [str(exc)]
    problems = list(dict.fromkeys(f"{located[m]}: {m}" if located.get(m) else m for m in found))
    if problems or config.get("method") not in METHODS:
        return problems or [f"method {config.get('method')!r} cannot run offline; use one of {', '.join(METHODS)}"]
    if config["method"] == "bayes" and "metric" not in config:
        problems.append("bayes search needs a `metric` (name and goal) to optimise")
    if "early_terminate" in config and "metric" not in config:
        problems.append("`early_terminate` needs a `metric` to compare trials by")
    for name, spec in config["parameters"].items():  # the agent writes --x=None, and a mapping as its repr
        values = [spec.get("value")] if "value" in spec else spec.get("values", [])
        if "parameters" in spec or any(v is None or isinstance(v, dict) for v in values):
            problems.append(f"parameters.{name}: a None or mapping value reaches the program as the text "
                            f"'--{name}=None' or a dict's repr; give plain values")
    try:
        if not problems:
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
    except Exception as exc:  # the engine refuses with several exception types
        problems.append(str(exc).strip().splitlines()[0])
    program = config.get("program")
    if "program" in agent_command.macros_used(config.get("command")):
        if not program:
            problems.append("the command uses ${program} but the sweep names no `program`")
        elif not Path(program).is_file():
            problems.append(f"program {program!r} is not a file in {Path.cwd()}; wandb agent runs it "
                            "from its working folder, so start the sweep from the folder it expects")
    return problems


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A sweep YAML with ``overrides`` pinned, checked as W&B would; a broken file is one UsageError line."""
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
    if problems := config_problems(config):
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
    pid: int | None = None  # the latest attempt's process group and start time: a later runner
    pid_started: int | None = None  # stops an orphan, never a process that got the number since
    resumed: int = 0

    log = property(lambda self: Path(self.out_dir) / "trial.log")
    metric_file = property(lambda self: Path(self.out_dir) / "metric.jsonl")
    values = property(lambda self: {k: v["value"] for k, v in self.params.items()})

    def engine_run(self) -> sweeps.SweepRun:
        return sweeps.SweepRun(name=self.run_id, state=sweeps.RunState(_ENGINE_STATE.get(self.state, self.state)),
                               config=self.params, history=self.history, summary_metrics=self.summary)

    def score(self, metric: dict[str, Any] | None) -> float | None:
        """The trial's best value of the sweep's metric, as the engine ranks it (None if never reported)."""
        try:
            goal = "maximum" if metric["goal"] == "maximize" else "minimum"
            return float(self.engine_run().metric_extremum(metric["name"], goal))
        except (TypeError, ValueError):
            return None

    def read_metric(self, metric: str) -> bool:
        """Read the whole ``[step, value]`` lines, where a resumed attempt's step replaces what earlier
        attempts reported from it on; whether the history changed."""
        try:
            data = self.metric_file.read_bytes()
        except FileNotFoundError:
            return False
        history: list[dict[str, Any]] = []
        for step, value in map(json.loads, data[: data.rfind(b"\n") + 1].splitlines()):  # whole lines only
            history = [r for r in history if r["step"] < step] + [{"step": step, metric: value}]
        changed, self.history = history != self.history, history
        self.summary = {metric: history[-1][metric]} if history else self.summary
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
    source: str = ""
    trials: list[Trial] = field(default_factory=list)

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
        sweep = cls(directory, config, name, local_id, sweep_id, count, seed, str(source))
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
        trial_keys, keys = {f.name for f in fields(Trial)}, {f.name for f in fields(cls)} - {"directory", "trials"}
        return cls(directory, **{k: v for k, v in state.items() if k in keys}, trials=[
            Trial(**{k: v for k, v in t.items() if k in trial_keys}) for t in state.get("trials", [])])

    def save(self) -> None:
        state = {"version": STATE_VERSION, **{k: v for k, v in asdict(self).items() if k != "directory"}}
        with atomic_file(self.directory / STATE_FILE) as fh:
            fh.write(json.dumps(state, indent=1, default=str).encode())

    metric = property(lambda self: self.config.get("metric"))
    # a random or bayes sweep ends by --count or the YAML's run_cap, whichever comes first
    cap = property(lambda self: min(self.count or math.inf, self.config.get("run_cap") or math.inf))

    @property
    def param_dir(self) -> Path:
        sweep = agent_command.split_sweep_path(self.sweep_id)[2] if self.sweep_id else self.local_id
        return self.directory / "wandb" / f"sweep-{sweep}"

    def trial(self, run_id: str) -> Trial:
        return next(t for t in self.trials if t.run_id == run_id)

    def propose(self) -> dict[str, dict[str, Any]] | None:
        """The engine's next parameters as plain JSON values (as from the server), None when a grid is exhausted.
        Random and bayes draw from NumPy's global generator: seeded per trial, repeatable across --resume."""
        np.random.seed((self.seed * 100_003 + len(self.trials)) % 2**32)
        run = sweeps.next_run(self.config, [t.engine_run() for t in self.trials])
        return None if run is None else json.loads(json.dumps(run.config, default=lambda v: v.item()))

    def ranked(self) -> list[Trial]:
        """Ended trials, best first by the sweep's metric (trials without a value last)."""
        sign = -1.0 if (self.metric or {}).get("goal") == "maximize" else 1.0
        scores = {t.run_id: t.score(self.metric) for t in self.trials if t.state in ENDED}
        return sorted((t for t in self.trials if t.state in ENDED), key=lambda t: (
            (1, 0.0) if scores[t.run_id] is None or math.isnan(scores[t.run_id]) else (0, sign * scores[t.run_id])))

    def swept(self) -> list[str]:
        """Names of the parameters that vary (not pinned to one value)."""
        return [k for k, v in self.config["parameters"].items() if not (isinstance(v, dict) and "value" in v)]


def _started_at(pid: int) -> int | None:
    """Process ``pid``'s start time (clock ticks since boot); None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if stat[0] in "ZX" else int(stat[19])


class SweepStopped(Exception):
    """The sweep gave up (repeated failures); the message says why."""


class Runner:
    """Runs a :class:`Sweep`'s trials, ``jobs`` at a time, as ``wandb agent`` does, each writing into its
    own folder; wandb's ``Agent`` stops trials and counts failures."""

    POLL_S = 0.1

    def __init__(self, sweep: Sweep, *, jobs: int = 1, wandb_mode: str | None = None, say: Any = None) -> None:
        self.sweep, self.jobs, self.wandb_mode, self.live, self.exhausted = sweep, jobs, wandb_mode, {}, False
        self.say = say or (lambda message, style=None: None)
        self.metric, had_dir = (sweep.metric or {}).get("name"), wandb_env.DIR in os.environ
        self.agent = Agent(api=None, queue=None)  # no server: only its process and failure rules
        if not had_dir:  # it sets WANDB_DIR for the trials it starts; ours get their own
            del os.environ[wandb_env.DIR]

    def _start(self, trial: Trial) -> None:
        """Start a trial, or an interrupted one again as itself, from its own last checkpoint."""
        sweep, resume, files = self.sweep, trial.state == INTERRUPTED, self.sweep.param_dir / f"config-{trial.run_id}"
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
        if resume:  # WANDB_RESUME=must fails for an offline-only run
            env[RESUME_ENV], env[wandb_env.RESUME], trial.resumed = "auto", "allow", trial.resumed + 1
        else:
            trial.command = agent_command.trial_command(
                sweep.config.get("command"), program=sweep.config.get("program"), params=trial.params,
                args_json_file=files.with_suffix(".json"), python=agent_command.interpreter(os.environ))
        with open(trial.log, "ab") as log:
            if resume:
                log.write(f"\n--- resumed: attempt {trial.resumed + 1} of this trial ({trial.note}) ---\n".encode())
                log.flush()
            try:  # as the agent does: own process group, stdin a pipe closed at once
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
        sweep.save()
        self.say(f"trial {trial.index} {'resumed in run ' + trial.run_id if resume else 'started'}: "
                 + " ".join(f"{k}={fmt(v)}" for k, v in trial.values.items()) + f"  (log: {trial.log})")

    def _stop_orphan(self, trial: Trial) -> None:
        """Stop what a killed runner left of ``trial``: two processes must never write one W&B run."""
        def alive() -> bool:
            return None not in (trial.pid, trial.pid_started) and _started_at(trial.pid) == trial.pid_started

        if not alive():
            return
        self.say(f"trial {trial.index} still runs from the runner that was stopped (process group "
                 f"{trial.pid}); stopping it before it resumes", style="yellow")
        os.kill(trial.pid, signal.SIGTERM)  # the trial alone, as the agent stops it: it finishes its W&B run
        for delay in (self.agent._kill_delay, 10.0):
            deadline = time.monotonic() + delay
            while alive() and time.monotonic() < deadline:
                time.sleep(self.POLL_S)
            _killpg(trial.pid)  # then what it started (W&B's service), or all of it
        if alive():
            raise SweepStopped(f"trial {trial.index} (process group {trial.pid}) survives SIGKILL; resuming it "
                               "would make two processes write one W&B run")

    def _ended(self, trial: Trial, code: int) -> None:
        found = sorted(Path(trial.out_dir).glob(f"wandb/*run-*-{trial.run_id}"), key=lambda p: p.name.split("run-")[1])
        trial.run_dir, trial.exit_code, trial.ended = str(found[-1]) if found else trial.run_dir, code, time.time()
        if trial.state == STOPPED:
            self.say(f"trial {trial.index} stopped early by hyperband ({trial.note})")
        elif code <= 0:  # killed by a signal is no failure to the agent either
            trial.state = FINISHED
            score = trial.score(self.sweep.metric)
            self.say(f"trial {trial.index} finished" + (f"  {self.metric}={score:.4g}" if score is not None else ""))
        else:
            trial.state, trial.note = FAILED, f"exit code {code}; log: {trial.log}"
            self.say(f"trial {trial.index} failed ({trial.note})", style="red")
        self.sweep.save()
        agent = self.agent  # counted as Agent._run_loop counts an ended run
        if code > 0:
            agent._failed += 1
            why = (f"{agent._failed} trials failed within the first {agent.FLAPPING_MAX_SECONDS} s, so the sweep "
                   "stops (as wandb agent does; WANDB_AGENT_DISABLE_FLAPPING=true keeps going)" if agent.is_flapping()
                   else f"{agent._failed} trials failed and {agent._finished} ended, so the sweep stops (as wandb "
                   "agent does; WANDB_AGENT_MAX_INITIAL_FAILURES raises the limit)" if agent.is_failing() else "")
            if why:
                raise SweepStopped(f"{why}; see the last log: {trial.log}")
        agent._finished += 1

    def _step(self) -> bool:
        """Read new metric lines, resend stops (the agent kills after its delay), end what exited, stop
        what hyperband stops, start trials up to ``jobs``; whether any still run."""
        sweep, new = self.sweep, False
        for run_id, proc in list(self.live.items()):
            trial = sweep.trial(run_id)
            new |= bool(self.metric) and trial.read_metric(self.metric)
            if (code := proc.poll()) is None and trial.state == STOPPED:
                self.agent._command_stop({"run_id": run_id})
            elif code is not None:
                del self.live[run_id], self.agent._run_processes[run_id]
                self._ended(trial, code)
        if new and "early_terminate" in sweep.config:
            for run in sweeps.stop_runs(sweep.config, [t.engine_run() for t in sweep.trials]):
                trial, lines = sweep.trial(run.name), (run.early_terminate_info or {}).get("lines", [])
                if trial.state == RUNNING and run.name in self.live:
                    trial.state, trial.note = STOPPED, lines[-1].strip() if lines else "hyperband"
                    self.agent._command_stop({"run_id": run.name})  # SIGTERM, as the server's stop command
                    sweep.save()
        while len(self.live) < self.jobs:
            trial = next((t for t in sweep.trials if t.state == INTERRUPTED), None)
            if trial is None:
                if self.exhausted or len(sweep.trials) >= sweep.cap or (params := sweep.propose()) is None:
                    self.exhausted = True
                    break
                run_id = generate_id()
                out_dir = sweep.directory / "trials" / f"{len(sweep.trials):03d}-{run_id}"
                out_dir.mkdir(parents=True)
                trial = Trial(index=len(sweep.trials), run_id=run_id, params=params, out_dir=str(out_dir))
                sweep.trials.append(trial)
            self._start(trial)
        return bool(self.live)

    def run(self) -> None:
        """Run trials until done; on :class:`SweepStopped` or KeyboardInterrupt stop and record the running
        ones (SIGTERM, then SIGKILL after the agent's kill delay or a second Ctrl-C)."""
        for trial in self.sweep.trials:
            if trial.state in (RUNNING, PENDING):  # the runner was killed under it: it resumes
                trial.state, trial.note = INTERRUPTED, "the runner stopped while it ran"
        self.sweep.save()
        try:
            for trial in (t for t in self.sweep.trials if t.state == INTERRUPTED):
                self._stop_orphan(trial)
            while self._step():
                time.sleep(self.POLL_S)
        except (SweepStopped, KeyboardInterrupt) as exc:
            for proc in self.live.values():
                proc.terminate()
            deadline = time.monotonic() + self.agent._kill_delay
            for run_id, proc in self.live.items():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except (subprocess.TimeoutExpired, KeyboardInterrupt):
                    deadline = 0.0  # the rest are killed at once too
                    _killpg(proc.pid)
                    proc.wait()
                trial = self.sweep.trial(run_id)
                if self.metric:
                    trial.read_metric(self.metric)
                trial.exit_code, trial.ended = proc.returncode, time.time()
                if trial.state == RUNNING:
                    trial.state = INTERRUPTED
                    trial.note = "the sweep gave up" if isinstance(exc, SweepStopped) else "interrupted"
            self.live.clear()
            self.sweep.save()
            raise


def _killpg(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reproduce_command(trial: Trial) -> str:
    """The shell command that runs ``trial`` again (the agent's ``/usr/bin/env`` prefix dropped)."""
    return shlex.join(trial.command[1:] if trial.command[:1] == ["/usr/bin/env"] else trial.command)
