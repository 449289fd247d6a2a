"""Fetching files: a cache, a checksum, a progress bar, and a fast one-line failure (every caller has a fallback)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import wrap_file

from dlhw.core.files import atomic_file

# Long enough for a slow server to answer, short enough that an offline machine moves on at once.
SOCKET_TIMEOUT_S = 10.0
# Wikimedia refuses requests without a descriptive User-Agent.
USER_AGENT = "dlhw-experiments/0.1 (deep-learning homework suite; python urllib)"


class DownloadError(OSError):
    """A download that failed (no network, HTTP error, checksum mismatch); the message is one line."""


def cache_dir(*parts: str) -> Path:
    """``$DLHW_CACHE`` or ``~/.cache/dlhw``, joined with ``parts``."""
    return Path(os.environ.get("DLHW_CACHE") or Path.home() / ".cache" / "dlhw").joinpath(*parts)


@contextlib.contextmanager
def socket_timeout(seconds: float = SOCKET_TIMEOUT_S) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def file_digest(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def download(url: str, dest: str | os.PathLike[str], *, sha256_prefix: str | None = None,
             timeout: float = SOCKET_TIMEOUT_S) -> Path:
    """``url`` at ``dest`` unless a file with the right checksum is there; :class:`DownloadError` leaves nothing."""
    dest = Path(dest)

    def verified(path: Path) -> bool:
        return not sha256_prefix or file_digest(path).startswith(sha256_prefix.lower())

    if dest.is_file() and verified(dest):
        return dest
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with atomic_file(dest, suffix=".part") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with wrap_file(response, total, description=f"downloading {dest.name}", console=Console(stderr=True),
                           transient=True) as reader:
                shutil.copyfileobj(reader, out, 1 << 16)
            out.flush()
            if not verified(Path(out.name)):
                raise DownloadError(f"checksum mismatch for {url}; the file may have changed upstream")
        return dest
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url} ({reason})") from None
