"""Trial commands against W&B's documented macros, and against the agent's own code.

The documented behaviour (docs.wandb.ai, "Sweep configuration options", command macros):
``${env}`` is ``/usr/bin/env`` on Unix; ``${interpreter}`` is ``python``; ``${program}`` the
``program`` key; ``${args}`` ``--param=value``; ``${args_no_hyphens}`` ``param=value``;
``${args_no_boolean_flags}`` ``--param=value`` with booleans as ``--flag`` when true and omitted
when false; ``${args_json}`` the parameters as JSON; ``${args_json_file}`` the path of a file
holding that JSON; ``${envvar:NAME}`` the value of the environment variable NAME. Without a
``command`` key the agent runs ``${env} ${interpreter} ${program} ${args}``.
"""

from __future__ import annotations

import inspect
import json

import pytest
from wandb import wandb_agent
from wandb.sdk.lib.config_util import dict_from_config_file

from dlhw.core.errors import UsageError
from dlhw.tracking import agent_command
from dlhw.tracking.agent_command import split_sweep_path, trial_command, trial_environment

PARAMS = {k: {"value": v} for k, v in {"lr": 0.1, "augment": True, "decay_all": False, "optimizer": "adam"}.items()}


def _cmd(command, tmp_path, **kw):
    return trial_command(command, program="train.py", params=PARAMS, args_json_file=tmp_path / "args.json", **kw)


def test_default_command_is_env_python_program_args(tmp_path):
    assert _cmd(None, tmp_path) == ["/usr/bin/env", "python", "train.py",
                                    "--lr=0.1", "--augment=True", "--decay_all=False", "--optimizer=adam"]
    assert not (tmp_path / "args.json").exists()  # written only when the command asks for it


def test_each_args_form(tmp_path):
    assert _cmd(["${args_no_hyphens}"], tmp_path) == ["lr=0.1", "augment=True", "decay_all=False", "optimizer=adam"]
    assert _cmd(["${args_no_boolean_flags}"], tmp_path) == ["--lr=0.1", "--augment", "--optimizer=adam"]
    (as_json,) = _cmd(["${args_json}"], tmp_path)
    assert json.loads(as_json) == {"lr": 0.1, "augment": True, "decay_all": False, "optimizer": "adam"}
    (path,) = _cmd(["${args_json_file}"], tmp_path)
    assert path == str(tmp_path / "args.json")
    assert json.loads((tmp_path / "args.json").read_text())["optimizer"] == "adam"


def test_custom_command_with_envvar_and_unknown_macro(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/mnt/data")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    sweep_command = ["${env}", "${interpreter}", "${program}", "alexnet", "--data=${envvar:DATA_ROOT}/cifar",
                     "${envvar:NOT_SET_ANYWHERE}", "${no_such_macro}", "${args}"]
    original = list(sweep_command)
    argv = _cmd(sweep_command, tmp_path, python="/opt/py/bin/python")
    assert argv[:6] == ["/usr/bin/env", "/opt/py/bin/python", "train.py", "alexnet", "--data=/mnt/data/cifar",
                        "NOT_SET_ANYWHERE"]  # W&B leaves an unset variable's name in place
    assert argv[6:] == ["--lr=0.1", "--augment=True", "--decay_all=False", "--optimizer=adam"]  # unknown macro vanished
    assert sweep_command == original  # the sweep's own list is not edited


def test_environment_carries_run_id_and_parameter_file(tmp_path):
    env = trial_environment({"PATH": "/bin", "WANDB_SWEEP_ID": "stale"}, run_id="abc12345", params=PARAMS,
                            param_file=tmp_path / "sweep-x" / "config-abc12345.yaml")
    assert env["WANDB_RUN_ID"] == "abc12345"
    assert "WANDB_SWEEP_ID" not in env  # an offline trial claims no sweep the server never saw
    # W&B's own reader (what wandb.init uses) gets the parameters back.
    assert dict_from_config_file(env["WANDB_SWEEP_PARAM_PATH"]) == {k: v["value"] for k, v in PARAMS.items()}
    online = trial_environment({}, run_id="r", params=PARAMS, param_file=tmp_path / "p.yaml",
                               sweep_id="team/proj/sw33p1d")
    assert (online["WANDB_SWEEP_ID"], online["WANDB_ENTITY"], online["WANDB_PROJECT"]) == ("sw33p1d", "team", "proj")
    assert split_sweep_path("sw33p1d") == (None, None, "sw33p1d")
    with pytest.raises(UsageError, match="--sweep-id 'a/b/c/d'"):
        split_sweep_path("a/b/c/d")


def test_the_agent_still_builds_commands_this_way():
    """Fails when a wandb upgrade changes what the agent does, so the mirror above gets revisited."""
    assert wandb_agent.Agent.DEFAULT_SWEEP_COMMAND == agent_command.DEFAULT_SWEEP_COMMAND
    source = inspect.getsource(wandb_agent.Agent._command_run)
    for piece in ("sweep_utils.create_sweep_command(", "sweep_utils.create_sweep_command_args(",
                  'sweep_vars["interpreter"] = ["python"]', 'sweep_vars["program"] = [command["program"]]',
                  'sweep_vars["env"] = ["/usr/bin/env"]', "wandb.env.SWEEP_PARAM_PATH", "wandb.env.RUN_ID",
                  'c.startswith("${") and c.endswith("}")'):
        assert piece in source, f"wandb agent no longer does {piece!r}; update tracking/agent_command.py"
