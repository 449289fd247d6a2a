"""sweeps/weight_decay_torchrun.yaml: each trial a torchrun job of launch.py, expanded with
``wandb agent``'s macros (tracking.agent_command, the agent's own code). Its first trial runs for real,
every rank's parameters recorded, as tests/distributed/test_torchrun_alexnet.py's 2-process run."""

from __future__ import annotations

import warnings

import yaml

from tests.conftest import ROOT
from dlhw.tracking.agent_command import trial_command

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
