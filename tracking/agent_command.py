"""A trial's command line and environment, built exactly as ``wandb agent`` builds them: the one place that imports
W&B's internal ``wandb.sdk.launch.sweeps.utils``, so a wandb upgrade that moves it fails here and in its test."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wandb import env as wandb_env
from wandb.sdk.launch.sweeps.utils import (DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args,
                                           parse_sweep_id)
from wandb.sdk.lib.config_util import save_config_file_from_dict

from dlhw.core.errors import UsageError


def split_sweep_path(path: str) -> tuple[str | None, str | None, str]:
    """``ENTITY/PROJECT/ID``, ``PROJECT/ID`` or ``ID`` -> ``(entity, project, id)``, as ``wandb agent`` reads it."""
    parts: dict[str, Any] = {"name": path}
    err = parse_sweep_id(parts)
    if err or not parts["name"]:
        raise UsageError(f"--sweep-id {path!r}: {err or f'no sweep id in {path!r}'}")
    return parts["entity"], parts["project"], parts["name"]


def interpreter(env: dict[str, str]) -> str:
    """``${interpreter}``: ``python`` with this interpreter's folder first on ``env``'s PATH, else its full path."""
    bindir = Path(sys.executable).parent
    if (bindir / "python").exists():
        env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
        return "python"
    return sys.executable


def trial_command(sweep_command: list | None, *, program: str | None, params: Mapping[str, Mapping[str, Any]],
                  args_json_file: str | Path, python: str = "python") -> list[str]:
    """The argv ``wandb agent`` runs for a trial with ``params`` (``{name: {"value": v}}``)."""
    # create_sweep_command edits the list it is given; the sweep's own list must stay as loaded.
    command = create_sweep_command(list(sweep_command or DEFAULT_SWEEP_COMMAND))
    sweep_vars: dict[str, Any] = create_sweep_command_args({"args": dict(params)})
    if "${args_json_file}" in command:
        Path(args_json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args_json_file).write_text(sweep_vars["args_json"][0])
    sweep_vars.update(interpreter=[python], program=[program], args_json_file=[str(args_json_file)])
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, command):
        macro = chunk.startswith("${") and chunk.endswith("}")
        argv += [str(v) for v in sweep_vars.get(chunk[2:-1]) or []] if macro else [chunk]
    return argv


def trial_environment(base: Mapping[str, str], *, run_id: str, params: Mapping[str, Mapping[str, Any]],
                      param_file: str | Path, sweep_id: str | None = None) -> dict[str, str]:
    """The environment the agent gives a trial: its run id and parameter file (``wandb.init`` reads it)."""
    env = {**base, wandb_env.RUN_ID: run_id, wandb_env.SWEEP_PARAM_PATH: str(param_file)}
    env.pop(wandb_env.SERVICE, None)
    save_config_file_from_dict(str(param_file), dict(params))
    if sweep_id:  # WANDB_SWEEP_ID only for a sweep the server knows: an unknown one does not sync cleanly
        entity, project, env[wandb_env.SWEEP_ID] = split_sweep_path(sweep_id)
        env.update({var: v for var, v in ((wandb_env.ENTITY, entity), (wandb_env.PROJECT, project)) if v})
    else:
        env.pop(wandb_env.SWEEP_ID, None)
    return env
