"""Files that are never half-written: write to a temporary file beside the target, then rename.

A crash at any point leaves either the old file or the new one, never a truncated mix; this is
how checkpoints, sweep state and downloads are written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


@contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` when the block ends without an exception.

    The temporary file's name is ``fh.name``, so the block can still check what it wrote; an
    exception (a failed checksum, say) removes it and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)  # reopened by name, so that ``fh.name`` is the temporary file's path
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that a crash leaves either the old file or the new one."""
    with atomic_file(path) as fh:
        torch.save(obj, fh)
    return Path(path)
