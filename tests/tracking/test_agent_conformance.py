"""wandb's own ``Agent`` (``wandb/wandb_agent.py``, what ``wandb agent`` runs) beside the offline
runner, for every YAML in sweeps/: the same trial command line, parameters and environment, and
the agent's own failure counting sees a stopped trial as a stop and a crash as a failure.

No server: the agent's ``_process_command`` gets ``run`` and ``stop`` commands as the server
sends them, and its ``_run_loop`` polls a stand-in for the server's heartbeat answer. The program
is a stand-in ``launch.py`` (in a scratch folder, as ``program: launch.py`` names it) that
records what it was given and stops as the suite's trainers do (``core.events``).
"""

from __future__ import annotations

import json
import os
import queue
import sys
from pathlib import Path

import pytest
import wandb
import yaml
from wandb.wandb_agent import Agent

from tests.conftest import ROOT
from dlhw.tracking.sweep import Runner, Sweep, load_config

YAMLS = sorted((ROOT / "sweeps").glob("*.yaml"))
VARS = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_DIR")

STAND_IN = """\
import json, os, sys, time
from pathlib import Path
from dlhw.core.events import Session, Stopped, end_by_signal

run_id = os.environ["WANDB_RUN_ID"]
rec = Path(os.environ["STAND_IN_RECORDS"])
if os.environ.get("RANK", "0") == "0":
    config = Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text()
    seen = {"argv": sys.argv[1:], "config": config, "env": {k: os.environ.get(k) for k in %r}}
    (rec / f"{run_id}.json").write_text(json.dumps(seen))
if run_id.startswith("crash"):
    sys.exit(3)
if run_id.startswith("stop"):
    session = Session()
    try:
        with session.stopping_on_signals():  # a trainer's loop: stop at the next step's end
            (rec / f"{run_id}.ready").touch()
            while True:
                time.sleep(0.05)
                session.check_stop()
    except Stopped as stop:  # checkpoint written, run finished: then end as launch.py does
        end_by_signal(stop.signum)
""" % (VARS,)


class Server:
    """Stands in for what the W&B server answers an agent's heartbeat: ``run`` commands for the
    trials asked for, then ``stop`` for each running ``stop-*`` trial once it is in its loop."""

    def __init__(self, runs: list[dict], records: Path) -> None:
        self.pending, self.records = list(runs), records
        self._service_api = self  # what the agent's heartbeat calls

    def execute_graphql(self, mutation: str, variables: dict, timeout: int) -> dict:
        commands, self.pending = self.pending, []
        for run_id in json.loads(variables["runState"]):
            if (self.records / f"{run_id}.ready").exists():
                commands.append({"type": "stop", "run_id": run_id})
        return {"agentHeartbeat": {"commands": json.dumps(commands)}}


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working folder holding the stand-in ``launch.py``, with the agent's variables restored afterwards."""
    (tmp_path / "launch.py").write_text(STAND_IN)
    (tmp_path / "records").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAND_IN_RECORDS", str(tmp_path / "records"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "agent"))
    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SWEEP_ID"):  # the agent sets them in os.environ
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(Agent, "POLL_INTERVAL", 0.05)
    return tmp_path


def run_agent(config: dict, runs: list[dict], records: Path, monkeypatch) -> Agent:
    """wandb's Agent running ``runs`` to their end as ``wandb agent`` would, the server stood in for."""
    server = Server(runs, records)
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: server)  # the agent makes a new one after each run
    agent = Agent(server, queue.Queue(), count=len(runs))
    agent._sweep_command = config.get("command") or []
    agent._run_loop("agent-1")
    return agent


@pytest.mark.parametrize("path", [pytest.param(y, marks=[pytest.mark.slow] if "torchrun" in y.name else [])
                                  for y in YAMLS], ids=lambda p: p.name)
def test_the_agent_and_the_offline_runner_run_the_same_trial(path, scratch, monkeypatch):
    config = load_config(path)
    sweep = Sweep.create(config, out=scratch / "out", source=str(path), count=1)
    Runner(sweep).run()
    (trial,) = sweep.trials
    assert trial.state == "finished", trial.log.read_text()[-2000:]
    offline = json.loads((scratch / "records" / f"{trial.run_id}.json").read_text())

    (scratch / "records" / f"{trial.run_id}.json").unlink()
    agent = Agent(None, queue.Queue())
    agent._sweep_command = config.get("command") or []
    answer = agent._process_command({"type": "run", "run_id": trial.run_id, "args": trial.params,
                                     "program": config["program"]})
    assert "exception" not in answer, answer
    proc = agent._run_processes[trial.run_id]
    assert proc.wait(timeout=300) == 0
    online = json.loads((scratch / "records" / f"{trial.run_id}.json").read_text())

    assert proc._popen.args == trial.command  # the whole command line, interpreter and launcher included
    assert online["argv"] == offline["argv"]
    config_file = yaml.safe_load(online["config"])
    assert config_file == yaml.safe_load(offline["config"]) and config_file.pop("wandb_version") == 1
    assert config_file == trial.params
    assert online["env"]["WANDB_RUN_ID"] == offline["env"]["WANDB_RUN_ID"] == trial.run_id
    assert online["env"]["WANDB_SWEEP_ID"] is offline["env"]["WANDB_SWEEP_ID"] is None  # no server sweep
    # The agent files runs under its WANDB_DIR (its working folder unless set); the runner under each trial's folder.
    assert (online["env"]["WANDB_DIR"], offline["env"]["WANDB_DIR"]) == (str(scratch / "agent"), trial.out_dir)

    runs = [{"type": "run", "run_id": run_id, "args": trial.params, "program": config["program"]}
            for run_id in ("stop-1", "crash-1")]
    agent = run_agent(config, runs, scratch / "records", monkeypatch)
    assert (agent._failed, agent._finished) == (1, 2)  # the crash counts as failed, the stop does not


def test_six_trials_stopped_by_the_agent_are_not_failures(scratch, monkeypatch):
    config = load_config(ROOT / "sweeps" / "learning_rate.yaml")
    params = {k: {"value": v.get("value", v.get("min"))} for k, v in config["parameters"].items()}
    runs = [{"type": "run", "run_id": f"stop-{i}", "args": params, "program": config["program"]} for i in range(6)]
    agent = run_agent(config, runs, scratch / "records", monkeypatch)
    assert (agent._failed, agent._finished, agent._running) == (0, 6, False)
    assert len(list((scratch / "records").glob("stop-*.ready"))) == 6
