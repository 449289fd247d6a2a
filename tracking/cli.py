"""launch.py's command line: a parser for every spelling ``wandb agent`` gives a parameter, env defaults, W&B mode."""

from __future__ import annotations

import argparse
import functools
import json
import netrc
import os
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import yaml

from dlhw.core.errors import UsageError, suggest

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
OUT_ENV = "DLHW_OUT"  # --out's default: the sweep runner sets it so that a trial's files land under its --out
RESUME_ENV = "DLHW_RESUME"  # --resume's default: the sweep runner sets "auto" when it starts an interrupted trial again


class AgentParser(argparse.ArgumentParser):
    """Reads the agent's spellings, never abbreviates; ``store_true`` flags become ``--flag`` / ``--no-flag``."""

    reads_sweep_params = False  # set on the experiments' subparsers: name=value, JSON and the parameter file too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.register("action", "store_true", functools.partial(argparse.BooleanOptionalAction, default=False))

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        tokens = [dashed(a) for a in (sys.argv[1:] if args is None else args)]
        if self.reads_sweep_params:
            tokens = self._sweep_tokens(tokens)
        return super().parse_known_args(self._argparse_spelling(tokens), namespace)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The subcommand's parser knows its flags; argparse leaves unknown ones to the top parser.
            subparsers = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            parser = next((a.choices.get(getattr(parsed, a.dest, None)) for a in subparsers), None) or self
            flags = [t.partition("=")[0] for t in extras if t.startswith("-")]
            if not flags:
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
            known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            parser.error(f"unrecognized argument {flags[0]}{suggest(flags[0], known, first=initials(flags[0], known))}")
        return parsed

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own message lists the choices but not the close ones.
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{suggest(str(value), choices)}; "
                                                 f"choose from {', '.join(choices)}")

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")

    def _argparse_spelling(self, tokens: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            flag, eq, value = token.partition("=")
            action = self._option_string_actions.get(flag) if token.startswith("--") else None
            if action is not None and not eq and i + 1 < len(tokens) and _value_follows(action, tokens[i + 1]):
                value, eq = tokens[i + 1], "="  # ${args_no_equals}: --flag VALUE
                i += 1
            i += 1
            if action is None or not eq:
                out.append(token)
            elif isinstance(action, argparse.BooleanOptionalAction):
                out.append(_switch_token(action, flag, value))
            elif _is_list(value) and isinstance(action, argparse._AppendAction):
                out += [f"{flag}={v}" for v in _list_items(value)]
            elif _is_list(value) and action.nargs not in (None, "?"):
                out += [flag, *_list_items(value)]
            else:
                out.append(f"{flag}={value}")
        return out

    def _sweep_tokens(self, tokens: list[str]) -> list[str]:
        # A parameter the command line leaves out comes from the file: ${args_no_boolean_flags} omits a false one.
        out: list[str] = []
        for token in tokens:
            params = json_params(token)
            if params is not None:
                out += [dashed(f"--{k}={v}") for k, v in params.items()]
                continue
            name, eq, _ = token.partition("=")
            if eq and not token.startswith("-") and self._option_string_actions.get(dashed("--" + name)):
                token = dashed("--" + token)  # ${args_no_hyphens}
            out.append(token)
        given = {self._option_string_actions.get(t.partition("=")[0]) for t in out if t.startswith("--")}
        # Python's str() of each value, as ${args} writes it (lists read [a, b]).
        return [dashed(f"--{k}={v}") for k, v in sweep_param_file().items()
                if self._option_string_actions.get(dashed("--" + k)) not in given | {None}] + out


def dashed(token: str) -> str:
    """``--flag_name=v`` -> ``--flag-name=v``; anything else unchanged."""
    if not token.startswith("--") or token == "--":
        return token
    flag, eq, value = token.partition("=")
    return flag.replace("_", "-") + eq + value


def initials(flag: str, known: list[str]) -> list[str]:
    """Known flags that are ``flag``'s initials or whose initials it is (``--lr``, ``--learning-rate``)."""

    def of(f: str) -> str | None:
        words = f.lstrip("-").split("-")
        return "".join(w[0] for w in words if w) if len(words) > 1 else None

    return [k for k in known if of(flag) == k.lstrip("-") or of(k) == flag.lstrip("-")]


def _value_follows(action: argparse.Action, following: str) -> bool:
    if isinstance(action, argparse.BooleanOptionalAction):
        return following.lower() in TRUE_WORDS + FALSE_WORDS
    if action.nargs is None and following.startswith("-"):
        with suppress(ValueError):
            float(following)
            return True  # argparse takes -1e-4 for a flag and reports the value as missing
    return _is_list(following) and (action.nargs not in (None, "?") or isinstance(action, argparse._AppendAction))


def _switch_token(action: argparse.Action, flag: str, value: str) -> str:
    on = next(o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-"))
    word = value.strip().lower()
    if word in TRUE_WORDS + FALSE_WORDS:
        return on if word in TRUE_WORDS else "--no-" + on[2:]
    raise UsageError(f"{flag} takes true or false (or {on} / --no-{on[2:]}), got {value!r}")


def _is_list(value: str) -> bool:
    return value.strip().startswith("[") and value.strip().endswith("]")


def _list_items(value: str) -> list[str]:
    try:
        return [str(v) for v in yaml.safe_load(value)]
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot read {value!r} as a list ({exc.__class__.__name__}); write it as [a, b, c]") from None


def json_params(token: str) -> dict[str, Any] | None:
    """The parameters in a ``${args_json}`` token or ``${args_json_file}`` path; None for any other token."""
    text = token.strip()
    if not text.startswith("{") and text.endswith(".json") and os.path.isfile(text):
        text = Path(text).read_text(encoding="utf-8").strip()
    try:
        return json.loads(text) if text.startswith("{") else None  # a JSON text opening with { is an object
    except json.JSONDecodeError:
        return None


def sweep_param_file() -> dict[str, Any]:
    """``name -> value`` from the file ``wandb agent`` names in ``WANDB_SWEEP_PARAM_PATH``, as wandb.init reads it."""
    from wandb.sdk.lib.config_util import dict_from_config_file

    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    return (dict_from_config_file(path) if path else None) or {}


def api_key_configured() -> bool:
    """``WANDB_API_KEY`` or a netrc entry for W&B's host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str | None) -> tuple[str, str]:
    """``(mode, reason)``: the flag wins, then ``WANDB_MODE``, then whether a key exists."""
    if requested:
        return requested, "--wandb-mode"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = {"run": "online", "dryrun": "offline"}.get(env, env)  # W&B's older spellings, which it still accepts
    if env in ("online", "offline", "disabled"):
        return env, "WANDB_MODE"
    if api_key_configured():
        return "online", "a W&B API key is configured"
    return "offline", "no W&B API key configured; run `wandb login` to go online"
