"""The one error type a user can cause and fix: launch.py prints it as one line and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UsageError(Exception):
    """Bad input the user can fix; the message is one line naming the culprit and what to do."""


def suggest(name: str, choices: Iterable[str], *, first: Sequence[str] = ()) -> str:
    """' (did you mean a, b?)' for up to 3 close matches of ``name`` (``first``, found another way, first), or ''."""
    close = list(dict.fromkeys([*first, *difflib.get_close_matches(name, list(choices), cutoff=0.5)]))[:3]
    return f" (did you mean {', '.join(close)}?)" if close else ""
