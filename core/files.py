"""Files never half-written (a temporary file, then a rename); checkpoints written while the next epoch runs."""

from __future__ import annotations

import copy
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
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


def writable_folder(path: str | os.PathLike[str], flag: str) -> None:
    """Create the folder ``path`` when missing and prove that a file can be written in it, else a UsageError."""
    from dlhw.core.errors import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else exc.strerror or type(exc).__name__
        raise UsageError(f"cannot write to {flag} {path} ({why}); pass {flag} a folder you can write to") from None


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
    """``obj`` as ``torch.load(weights_only=True)`` reads it: NumPy arrays and scalars as tensors and numbers,
    containers rebuilt, anything else its ``str``."""
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
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._failed: str = ""

    def submit(self, obj: Any, path: str | os.PathLike[str],
               also: Sequence[tuple[Any, str | os.PathLike[str]]] = ()) -> None:
        """Write ``obj`` to ``path``, then each ``(obj, path)`` of ``also``, in the background."""
        self.wait()
        writes = [(snapshot(o), p) for o, p in [(obj, path), *also]]
        self._thread = threading.Thread(target=self._write, args=(writes,), name="checkpoint-writer")
        self._thread.start()

    def _write(self, writes: list[tuple[Any, str | os.PathLike[str]]]) -> None:
        for state, path in writes:
            try:
                with atomic_file(path) as fh:
                    torch.save(state, fh)
            except BaseException as exc:  # handed to the training thread by wait()
                self._error, self._failed = exc, str(path)
                return

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing checkpoint {self._failed} failed: {error}") from error


class CheckpointError(RuntimeError):
    """A background checkpoint write failed."""
