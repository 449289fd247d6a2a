"""Paired timing for benchmarks on a shared, noisy machine.

Two measurements taken back to back share the machine's momentary load, so the ratio of each pair
is far steadier than the ratio of two separate averages; the median of the pair ratios ignores
the odd pair a neighbour's burst spoiled.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def alternate(first: Callable[[], T], second: Callable[[], T], repeats: int) -> tuple[list[T], list[T]]:
    """Run both ``repeats`` times, swapping which goes first each round, so neither always runs
    on a machine the other just warmed up or loaded."""
    a: list[T] = []
    b: list[T] = []
    for r in range(repeats):
        if r % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float], key: str = "ratio") -> dict:
    """``{key: median pair ratio, key_range: [lowest, highest]}``, rounded for JSON."""
    ratios = sorted(n / d for n, d in zip(numerators, denominators))
    return {key: round(statistics.median(ratios), 4), f"{key}_range": [round(ratios[0], 4), round(ratios[-1], 4)]}


def report(benchmark: str, first: Sequence[float], second: Sequence[float], *, names: tuple[str, str], goal: float,
           key: str = "ratio", extra: dict | None = None, **facts) -> dict:
    """Print and return a paired benchmark's JSON line: its facts, each side's best time, the pair
    ratios first / second and whether their median meets ``goal``."""
    result = {"benchmark": benchmark, **facts, names[0]: round(min(first), 4), names[1]: round(min(second), 4),
              **ratio_summary(first, second, key=key), f"goal_{key}": goal, **(extra or {})}
    result["meets_goal"] = result[key] <= goal
    print(json.dumps(result))
    return result
