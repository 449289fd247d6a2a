"""A command-line parser that reads every spelling ``wandb agent`` gives a trial's parameters.

``wandb agent`` writes a sweep's parameters into the trial's command through macros
(``${args}``, ``${args_no_equals}``, ``${args_no_boolean_flags}``, ``${args_no_hyphens}``,
``${args_json}``, ``${args_json_file}``) and into a YAML file named by ``WANDB_SWEEP_PARAM_PATH``.
Each spelling is turned into argparse's own before parsing, so every flag type can be swept:

- ``--flag_name`` is ``--flag-name`` (the YAML's parameter names);
- a boolean flag takes ``--flag``, ``--no-flag`` and ``--flag=True/False/true/false/1/0``
  (``${args}`` writes Python's ``True``); ``store_true`` flags become such switches;
- a flag taking several values takes W&B's list spelling ``--flag=[a, b, c]``;
- a flag's value may be a negative number in any spelling (``--lr -1e-4``, which argparse takes for a flag);
- with ``reads_sweep_params`` (the experiment subcommands): ``name=value``, one JSON object or the
  path of a JSON file, and the parameter file. A parameter the command line does not set comes
  from the file, so ``${args_no_boolean_flags}``, which leaves out a false boolean, still turns it off.

Only the standard library and PyYAML: the parser is built on every start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from dlhw.core.errors import UsageError, suggest

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
PARAM_PATH_ENV = "WANDB_SWEEP_PARAM_PATH"


class Switch(argparse.BooleanOptionalAction):
    """``store_true`` made a switch: ``--flag`` and ``--no-flag``, default False."""

    def __init__(self, option_strings: list[str], dest: str, default: Any = False, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=default, **kwargs)


class AgentParser(argparse.ArgumentParser):
    """ArgumentParser that reads the agent's spellings (module docstring) and never abbreviates flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", "store_true", Switch)
        self.reads_sweep_params = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        tokens = [dashed(a) for a in (sys.argv[1:] if args is None else args)]
        if self.reads_sweep_params:
            tokens = self._sweep_tokens(tokens)
        return super().parse_known_args(self._argparse_spelling(tokens), namespace)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The subcommand's parser knows its flags; argparse leaves unknown ones to the top parser.
            parser = self._chosen_subparser(parsed) or self
            flags = [t.partition("=")[0] for t in extras if t.startswith("-")]
            if not flags:
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
            known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            close = suggest(flags[0], known, first=initial_matches(flags[0], known))
            parser.error(f"unrecognized argument {flags[0]}{close}")
        return parsed

    def _chosen_subparser(self, parsed: argparse.Namespace) -> AgentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None))
        return None

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own message lists the choices but not the close ones.
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{suggest(str(value), choices)}; "
                                                 f"choose from {', '.join(choices)}")

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        """Every parsing error is one line naming the culprit, as every other error the user can fix."""
        raise UsageError(f"{message}; see `{self.prog} --help`")

    def _action(self, flag: str) -> argparse.Action | None:
        return self._option_string_actions.get(flag)

    def _argparse_spelling(self, tokens: list[str]) -> list[str]:
        """Booleans with a value and list values rewritten as argparse expects them."""
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            flag, eq, value = token.partition("=")
            action = self._action(flag) if token.startswith("--") else None
            if action is not None and not eq and i + 1 < len(tokens) and _agent_value_follows(action, tokens[i + 1]):
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
        """Macro forms as ``--name=value``, preceded by the parameter file's values the tokens do not set."""
        out: list[str] = []
        for token in tokens:
            params = json_params(token)
            if params is not None:
                out += [flag_token(k, v) for k, v in params.items()]
                continue
            name, eq, _ = token.partition("=")
            if eq and not token.startswith("-") and self._action(dashed("--" + name)):
                token = dashed("--" + token)  # ${args_no_hyphens}
            out.append(token)
        given = {self._action(t.partition("=")[0]) for t in out if t.startswith("--")}
        from_file = [flag_token(k, v) for k, v in sweep_param_file().items()
                     if self._action(dashed("--" + k)) not in given | {None}]
        return from_file + out


def dashed(token: str) -> str:
    """``--flag_name=v`` -> ``--flag-name=v``; anything else unchanged."""
    if not token.startswith("--") or token == "--":
        return token
    flag, eq, value = token.partition("=")
    return flag.replace("_", "-") + eq + value


def initial_matches(flag: str, known: list[str]) -> list[str]:
    """The known flags that are ``flag``'s initials or whose initials ``flag`` is: ``--learning-rate``
    and ``--lr``, ``--wd`` and ``--weight-decay``, which no spelling distance finds."""

    def initials(f: str) -> str | None:
        words = f.lstrip("-").split("-")
        return "".join(w[0] for w in words if w) if len(words) > 1 else None

    name = flag.lstrip("-")
    return [k for k in known if initials(flag) == k.lstrip("-") or initials(k) == name]


def flag_token(name: str, value: Any) -> str:
    """One parameter as ``${args}`` spells it (Python's ``str``, so lists read ``[a, b]``), dashed."""
    return dashed(f"--{name}={value}")


def _agent_value_follows(action: argparse.Action, following: str) -> bool:
    if isinstance(action, argparse.BooleanOptionalAction):
        return following.lower() in TRUE_WORDS + FALSE_WORDS
    if action.nargs is None and _is_negative_number(following):
        return True  # argparse takes -1e-4 for a flag and reports the value as missing
    return _is_list(following) and (action.nargs not in (None, "?") or isinstance(action, argparse._AppendAction))


def _switch_token(action: argparse.Action, flag: str, value: str) -> str:
    on = next(o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-"))
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return on
    if word in FALSE_WORDS:
        return "--no-" + on[2:]
    raise UsageError(f"{flag} takes true or false (or {on} / --no-{on[2:]}), got {value!r}")


def _is_negative_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return token.startswith("-")


def _is_list(value: str) -> bool:
    value = value.strip()
    return value.startswith("[") and value.endswith("]")


def _list_items(value: str) -> list[str]:
    import yaml

    try:
        items = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot read {value!r} as a list ({exc.__class__.__name__}); write it as [a, b, c]") from None
    return [str(v) for v in items]


def json_params(token: str) -> dict[str, Any] | None:
    """The parameters in a ``${args_json}`` token or a ``${args_json_file}`` path; None for any other token."""
    text = token.strip()
    if not text.startswith("{") and text.endswith(".json") and os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read().strip()
    if not text.startswith("{"):
        return None
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        return None
    return params if isinstance(params, dict) else None


def sweep_param_file() -> dict[str, Any]:
    """``name -> value`` from the file ``wandb agent`` names in ``WANDB_SWEEP_PARAM_PATH`` ({} without one)."""
    path = os.environ.get(PARAM_PATH_ENV)
    if not path or not os.path.isfile(path):
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    return {k: v["value"] for k, v in data.items() if isinstance(v, dict) and "value" in v}
