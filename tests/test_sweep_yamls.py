"""Every sweep YAML in sweeps/ is valid for W&B's sweeps engine, and its trials parse as
launch.py command lines (the flags exist, spelled with underscores as `wandb agent` writes them)."""

from __future__ import annotations

import warnings

import pytest
import yaml

from launch import get_args_parser
from tests.conftest import ROOT

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the engine's pydantic-v1 spellings warn at import
    import sweeps

YAMLS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_homeworks_two_sweeps_search_what_they_say():
    wd, lr = (yaml.safe_load((ROOT / "sweeps" / name).read_text()) for name in ("weight_decay.yaml", "learning_rate.yaml"))
    assert wd["method"] == "grid" and {"weight_decay", "lr"} <= {k for k, v in wd["parameters"].items() if "values" in v}
    assert lr["method"] == "bayes" and lr["early_terminate"]["type"] == "hyperband"
    assert wd["metric"] == lr["metric"] == {"name": "val/acc", "goal": "maximize"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_is_valid_and_its_trials_parse(path):
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert config["program"] == "launch.py" and (ROOT / config["program"]).is_file()
    command = config["command"]
    # A launcher (torchrun as `-m dlhw.tracking.torchrun ...`) may stand between the interpreter and the program.
    assert command[:2] == ["${env}", "${interpreter}"] and "${program}" in command and command[-1] == "${args}"
    assert config["metric"]["goal"] in ("maximize", "minimize")
    # The engine proposes the first trial exactly as W&B's controller would.
    proposal = sweeps.next_run(config, [], validate=True)
    params = {k: v["value"] for k, v in proposal.config.items()}
    argv = [*command[command.index("${program}") + 1:-1], *(f"--{k}={v}" for k, v in params.items())]
    args = get_args_parser().parse_args(argv)
    for key, value in params.items():
        assert getattr(args, key) == value, key
