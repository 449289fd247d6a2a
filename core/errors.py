"""The one error type a user can cause and fix: launch.py prints it as one line and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UsageError(Exception):
    """Bad input the user can fix; the message is one line naming the culprit and what to do."""


def suggest(name: str, choices: Iterable[str], n: int = 3, *, first: Sequence[str] = ()) -> str:
    """' (did you mean a, b?)' for close matches of ``name`` (``first``, found another way, before them), or ''."""
    spelled = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    close = list(dict.fromkeys([*first, *spelled]))[:n]
    return f" (did you mean {', '.join(close)}?)" if close else ""
