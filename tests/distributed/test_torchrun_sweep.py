"""sweeps/weight_decay_torchrun.yaml: each trial a torchrun job, expanded with ``wandb agent``'s
macros (tracking.agent_command, the agent's own code) and run for real: with a stand-in program
that shows what each rank sees, and with launch.py itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import yaml

from tests.conftest import ROOT
from dlhw.tracking.agent_command import trial_command, trial_environment
from dlhw.tracking.readback import run_summary

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the engine's pydantic-v1 spellings warn at import
    import sweeps

YAML = ROOT / "sweeps" / "weight_decay_torchrun.yaml"
TRIAL = ["--dataset=digits", "--epochs=2", "--lr=0.02", "--momentum=0.9", "--optimizer=sgd", "--wd_mode=coupled",
         "--weight_decay=0"]


def first_trial() -> tuple[dict, dict]:
    """The sweep's config and its first trial's parameters (wire form), as W&B's controller proposes them."""
    config = yaml.safe_load(YAML.read_text())
    return config, sweeps.next_run(config, [], validate=True).config


def test_the_command_expands_to_a_torchrun_job_of_launch_py(tmp_path):
    config, params = first_trial()
    argv = trial_command(config["command"], program=config["program"], params=params,
                         args_json_file=tmp_path / "args.json")
    assert argv == ["/usr/bin/env", "python", "-m", "dlhw.tracking.torchrun", "--standalone", "--nproc_per_node", "2",
                    "launch.py", "alexnet", *TRIAL]


@pytest.mark.slow
def test_torchrun_starts_two_ranks_that_each_see_the_parameters(tmp_path):
    config, params = first_trial()
    program = str(ROOT / "tests" / "distributed" / "sweep_trial.py")
    argv = trial_command(config["command"], program=program, params=params, args_json_file=tmp_path / "args.json",
                         python=sys.executable)
    env = trial_environment({**os.environ, "PYTHONPATH": str(ROOT), "DLHW_OUT": str(tmp_path)},
                            run_id="trial1", params=params, param_file=tmp_path / "params.yaml")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = {k: v["value"] for k, v in params.items()}
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"rank": rank, "world": 2, "argv": ["alexnet", *TRIAL], "param_file": values,
                        "sum_of_ranks": 1.0}


@pytest.mark.slow
def test_a_trial_runs_the_real_launch_py_alexnet_as_one_two_process_wandb_run(tmp_path):
    config, params = first_trial()
    argv = trial_command(config["command"], program=str(ROOT / "launch.py"), params=params,
                         args_json_file=tmp_path / "args.json", python=sys.executable)
    # Tiny on top of the trial's own flags (later flags win): 2 steps per epoch, no probe or pictures.
    argv += ["--device", "cpu", "--device-data", "on", "--limit-batches", "2", "--hessian-every", "0",
             "--viz-images", "0"]
    env = trial_environment({**os.environ, "PYTHONPATH": str(ROOT), "DLHW_OUT": str(tmp_path)},
                            run_id="trial1", params=params, param_file=tmp_path / "params.yaml")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*-trial1")  # rank 0's run, the agent's id
    info = run_summary(run_dir)
    assert info["state"] == "finished" and info["config"]["world_size"] == 2
    assert {k: info["config"][k] for k in ("lr", "optimizer", "epochs")} == {"lr": 0.02, "optimizer": "sgd", "epochs": 2}
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
