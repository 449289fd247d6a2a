"""Files never half-written (a temporary file, then a rename); checkpoints written while the next epoch runs."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


@contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` when the block ends without an exception (``fh.name``: the temporary)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=suffix, dir=path.parent, delete=False)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(fh.name, path)
    finally:
        Path(fh.name).unlink(missing_ok=True)


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` that training cannot change: tensors as detached CPU copies, other leaves deep-copied."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, (str, int, float, type(None))):  # immutable: nothing to copy
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def plain(obj: Any) -> Any:
    """``obj`` as ``torch.load(weights_only=True)`` reads it: NumPy values as tensors and numbers, others as ``str``."""
    if isinstance(obj, (torch.Tensor, str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return str(obj)


class BackgroundWriter:
    """Writes snapshots on a thread, in order; a failed write raises :class:`CheckpointError` at the next call."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._pending: Future[None] | None = None

    def submit(self, obj: Any, path: str | os.PathLike[str],
               also: Sequence[tuple[Any, str | os.PathLike[str]]] = ()) -> None:
        """Write ``obj`` to ``path``, then each ``(obj, path)`` of ``also``, in the background."""
        self.wait()
        self._pending = self._pool.submit(_write, [(snapshot(o), p) for o, p in [(obj, path), *also]])

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


class CheckpointError(RuntimeError):
    """A background checkpoint write failed."""


def _write(writes: list[tuple[Any, str | os.PathLike[str]]]) -> None:
    for state, path in writes:
        try:
            with atomic_file(path) as fh:
                torch.save(state, fh)
        except BaseException as exc:
            raise CheckpointError(f"writing checkpoint {path} failed: {exc}") from exc
