"""Every flag type set by a sweep through every agent macro: W&B's own ``create_sweep_command_args``
builds the trial's arguments and ``trial_environment`` writes the parameter file the agent writes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from dlhw.core.errors import UsageError
from launch import get_args_parser, resolve_locations
from dlhw.tracking.agent_command import trial_environment
from dlhw.trainers.classification import resolve_args
from dlhw.trainers.filters import filters_settings
from dlhw.trainers.iou import setup_from_args

MACROS = ["args", "args_no_equals", "args_no_boolean_flags", "args_no_hyphens", "args_json", "args_json_file"]


def _trial_argv(tmp_path, monkeypatch, command, params, macro):
    """The argv and environment ``wandb agent`` gives a trial of ``command`` with ``params``."""
    wire = {name: {"value": value} for name, value in params.items()}  # the agent's form
    env = trial_environment({}, run_id="r1", params=wire, param_file=tmp_path / "config-r1.yaml")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", env["WANDB_SWEEP_PARAM_PATH"])
    made = create_sweep_command_args({"args": wire})
    if macro == "args_json_file":
        path = tmp_path / "args.json"
        path.write_text(made["args_json"][0])
        return [command, str(path)]
    return [command, *made[macro]]


RESOLVE = {"alexnet": lambda args: resolve_args(args)[0], "iou": setup_from_args, "filters": filters_settings}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # resolve_locations creates the default ./runs; keep it out of the checkout.
    monkeypatch.chdir(tmp_path)


def _config(argv):
    """The W&B config of the trial: its resolved settings, as W&B stores them (tuples as lists)."""
    args = get_args_parser().parse_args(argv)
    resolve_locations(args)
    return json.loads(json.dumps(dataclasses.asdict(RESOLVE[args.command](args))))


@pytest.mark.parametrize("macro", MACROS)
@pytest.mark.parametrize("augment, decay_all", [(False, True), (True, False)])
def test_booleans_and_numbers_reach_training(tmp_path, monkeypatch, macro, augment, decay_all):
    # augment is unset (None) unless given, so the digits recipe would fill in True: a dropped
    # `augment: false` shows as training with augmentation.
    params = {"augment": augment, "decay_all": decay_all, "lr": 0.03, "optimizer": "sgd", "dataset": "digits"}
    config = _config(_trial_argv(tmp_path, monkeypatch, "alexnet", params, macro))
    assert {k: config[k] for k in params} == params


@pytest.mark.parametrize("macro", MACROS)
def test_lists_reach_training(tmp_path, monkeypatch, macro):
    params = {"box_a": [0, 0, 4, 4], "box_b": [-4.5, 1, -2, 3], "steps": 7}
    config = _config(_trial_argv(tmp_path, monkeypatch, "iou", params, macro))
    assert config["box_a"] == [0, 0, 4, 4] and config["box_b"] == [-4.5, 1, -2, 3] and config["steps"] == 7


@pytest.mark.parametrize("macro", MACROS)
def test_list_of_names_and_repeated_flag(tmp_path, monkeypatch, macro):
    params = {"filters": ["blur", "sharpen_h"], "image": ["a.png", "b.png"], "max_size": 64}
    config = _config(_trial_argv(tmp_path, monkeypatch, "filters", params, macro))
    assert config["filters"] == ["blur", "sharpen_h"] and config["image"] == ["a.png", "b.png"]


def test_explicit_flags_beat_the_parameter_file(tmp_path, monkeypatch):
    argv = _trial_argv(tmp_path, monkeypatch, "alexnet", {"lr": 0.03, "decay_all": True, "dataset": "digits"},
                       "args_no_boolean_flags")
    config = _config([*argv, "--lr=0.5", "--no-decay-all"])
    assert config["lr"] == 0.5 and config["decay_all"] is False


def test_every_boolean_spelling():
    p = get_args_parser()
    for spelling, value in [("--decay-all", True), ("--no-decay_all", False), ("--decay_all=True", True),
                            ("--decay-all=false", False), ("--decay-all=1", True), ("--decay-all=0", False)]:
        assert p.parse_args(["alexnet", spelling]).decay_all is value, spelling
    with pytest.raises(UsageError, match="--decay-all takes true or false"):
        p.parse_args(["alexnet", "--decay-all=maybe"])


def test_config_holds_settings_not_bookkeeping():
    config = _config(["alexnet", "--dataset", "digits", "--out", "/x", "--group", "g", "--run-name", "n",
                      "--project", "p", "--wandb-mode", "disabled", "--log-every", "3"])
    assert not {"out", "wandb_dir", "group", "run_name", "project", "wandb_mode", "log_every", "command"} & set(config)
    assert config["seed"] == 0 and config["dataset"] == "digits"


def test_a_negative_number_is_a_value_in_every_spelling():
    p = get_args_parser()
    for argv in (["alexnet", "--lr", "-1e-4"], ["alexnet", "--lr=-1e-4"], ["alexnet", "--lr", "-0.0001"]):
        assert p.parse_args(argv).lr == -1e-4
    assert p.parse_args(["iou", "--box-a", "-6", "0.5", "-3", "2"]).box_a == [-6, 0.5, -3, 2]


@pytest.mark.parametrize("flag, meant", [("--learning-rate", "--lr"), ("--wd", "--weight-decay"),
                                         ("--batchsize", "--batch-size"), ("--epoch", "--epochs")])
def test_an_unknown_flag_names_the_flag_meant(flag, meant):
    expected = rf"^unrecognized argument {flag} \(did you mean {meant}[,?].*`launch.py alexnet --help`$"
    with pytest.raises(UsageError, match=expected):
        get_args_parser().parse_args(["alexnet", flag, "1"])
