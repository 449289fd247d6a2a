"""The settings machinery: flags generated from a dataclass, and fields it cannot read refused where
they are defined."""

from __future__ import annotations

import argparse

import pytest

from dlhw.core.errors import UsageError
from dlhw.trainers.settings import add_arguments, make, setting, settings, values
from dlhw.tracking.cli import AgentParser


@settings
class Example:
    """Every supported field type."""

    lr: float = setting(help="from a recipe")
    steps: int = setting(3, "steps")
    name: str = setting("a", "a name", choices=("a", "b"))
    flag: bool = setting(False, "a switch")
    limit: int | None = setting(None, "optional")
    box: tuple[float, float] = setting((0.0, 1.0), "two numbers")
    names: tuple[str, ...] = setting((), "repeated", repeat=True)
    seed: int = setting(0, "not a flag", flag=False)


def _parse(argv):
    p = AgentParser()
    add_arguments(p, Example)
    return make(Example, values(Example, p.parse_args(argv)))


def test_flags_come_from_the_fields():
    s = _parse(["--lr=0.5", "--steps", "7", "--name=b", "--flag=false", "--limit", "2", "--box=[3, 4]",
                "--names", "x", "--names", "y"])
    assert s == Example(lr=0.5, steps=7, name="b", flag=False, limit=2, box=(3.0, 4.0), names=("x", "y"))
    assert _parse(["--lr", "1", "--flag"]) == Example(lr=1.0, flag=True)


def test_unset_and_unknown_are_errors():
    with pytest.raises(UsageError, match="'lr' of Example was left unset"):
        _parse([])
    with pytest.raises(UsageError, match=r"unknown Example setting 'step' \(did you mean steps"):
        make(Example, {"lr": 1.0, "step": 2})
    with pytest.raises(UsageError, match="unrecognized argument --seed"):
        _parse(["--lr", "1", "--seed", "3"])  # not a flag of its own


def test_a_field_without_help_fails_at_definition():
    with pytest.raises(TypeError, match="Bad.lr has no help"):
        @settings
        class Bad:
            lr: float = setting(0.1)


@pytest.mark.parametrize("annotation", ["list[int]", "dict", "int | str", "tuple[int, str]", "tuple[bool, ...]"])
def test_an_unsupported_type_fails_at_definition(annotation):
    namespace: dict = {}
    source = f"@settings\nclass Bad:\n    x: {annotation} = setting(None, 'help')\n"
    with pytest.raises(TypeError, match="Bad.x: unsupported type"):
        exec(source, {"settings": settings, "setting": setting, "argparse": argparse}, namespace)
