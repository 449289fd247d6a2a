"""An experiment's settings as one frozen dataclass of :func:`setting` fields, its flags generated from the types.
A field without a default comes from a recipe or profile; ``asdict`` of the resolved instance is the W&B config."""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dlhw.core.errors import UsageError, suggest

T = TypeVar("T")
BOUNDS = {"min": (operator.ge, "at least {}"), "above": (operator.gt, "above {}"), "below": (operator.lt, "below {}")}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[str] | None = None,
            metavar: str | tuple[str, ...] | None = None, group: str | None = None, flag: bool = True,
            repeat: bool = False, min: float | None = None, above: float | None = None,
            below: float | None = None) -> Any:
    """A settings field; ``repeat``: ``--flag a --flag b``; ``min`` (inclusive), ``above``, ``below``: finite bounds."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar,
            "group": group, "flag": flag, "repeat": repeat, "min": min, "above": above, "below": below}
    return dataclasses.field(default=default, metadata=meta)


def check(cls: type, given: Mapping[str, Any]) -> None:
    """A UsageError naming the flag of the first value of ``given`` outside its field's bounds (None is unset)."""
    for f in dataclasses.fields(cls):
        value, bounds = given.get(f.name), [(k, f.metadata[k]) for k in BOUNDS if f.metadata[k] is not None]
        ok = value is None or not bounds or (math.isfinite(value) and all(BOUNDS[k][0](value, b) for k, b in bounds))
        if not ok:
            rules = ["positive" if (k, b) == ("above", 0) else BOUNDS[k][1].format(b) for k, b in bounds]
            raise UsageError(f"--{f.name.replace('_', '-')} must be {' and '.join(rules)}, got {value}")


def settings(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, keyword-only dataclass of settings; a field without help or a readable type fails here."""
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        where = f"{cls.__name__}.{f.name}"
        if not f.metadata.get("help"):
            raise TypeError(f"{where} has no help; declare it with setting(default, 'what it does')")
        nargs = _parse_type(hints[f.name], where)[2]
        if f.metadata["repeat"] and nargs != "+":
            raise TypeError(f"{where}: repeat=True needs a tuple[X, ...] field")
    return cls


def _parse_type(tp: Any, where: str) -> tuple[type, bool, int | str | None]:
    """(scalar type, may be None, nargs) of a field's annotation; TypeError for any other type."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if len(members) != 2 or type(None) not in members:
            raise TypeError(f"{where}: unsupported type {tp}; only X | None unions are read")
        tp, optional = next(m for m in members if m is not type(None)), True
    nargs: int | str | None = None
    if typing.get_origin(tp) is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            tp, nargs = items[0], "+"
        elif items and all(i is items[0] for i in items):
            tp, nargs = items[0], len(items)
        else:
            raise TypeError(f"{where}: unsupported type; tuples are tuple[X, ...] or tuple[X, X, ...]")
    if tp not in (int, float, str, bool) or (tp is bool and nargs is not None):
        raise TypeError(f"{where}: unsupported type {tp}; use int, float, str, bool, X | None or tuples of them")
    return tp, optional, nargs


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls`` (``--field-name``), in the field's argument group."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta["flag"]:
            continue
        tp, _, nargs = _parse_type(hints[f.name], f.name)
        target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"])) if meta["group"] else parser
        unset = f.default is dataclasses.MISSING or meta["repeat"]
        kwargs: dict[str, Any] = {"default": None if unset else f.default, "help": meta["help"]}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=tp, choices=meta["choices"], metavar=meta["metavar"])
            if meta["repeat"]:
                kwargs["action"] = "append"
            elif nargs is not None:
                kwargs["nargs"] = nargs
        target.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The namespace's value of every field of ``cls`` it holds (None where a flag was left unset)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def make(cls: type[T], given: Mapping[str, Any]) -> T:
    """The settings from resolved values; an unknown name, a field left unset or out of bounds is a UsageError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise UsageError(f"unknown {cls.__name__} setting {unknown[0]!r}{suggest(unknown[0], fields)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in given.items():
        _, optional, nargs = _parse_type(hints[name], name)
        if value is not None or optional:  # an unset field takes its default; one without is named below
            out[name] = tuple(value) if nargs is not None and value is not None else value
    missing = [n for n, f in fields.items() if n not in out and f.default is dataclasses.MISSING]
    if missing:
        raise UsageError(f"setting {missing[0]!r} of {cls.__name__} was left unset; pass --{missing[0].replace('_', '-')}")
    check(cls, out)
    return cls(**out)
