"""The one error type a user can cause and fix: launch.py prints it as one line and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UsageError(Exception):
    """Bad input the user can fix (a missing file, an unknown name, a bad number).

    The message is one line that names the culprit and what to do about it.
    """


def suggest(name: str, choices: Iterable[str], n: int = 3, *, first: Sequence[str] = ()) -> str:
    """Return ' (did you mean a, b?)' for close matches of ``name``, or ''.

    ``first``: matches found another way (an abbreviation, say), listed before the spelled-alike ones.
    """
    spelled = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    close = list(dict.fromkeys([*first, *spelled]))[:n]
    return f" (did you mean {', '.join(close)}?)" if close else ""
