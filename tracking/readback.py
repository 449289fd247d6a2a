"""Reading a local run back as W&B itself reports it (``wandb leet inspect``), and the value reading,
ranking and number format that compare and report share."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_PICK = {"maximize": ("max", "last", "mean"), "minimize": ("min", "last", "mean")}


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wandb")
    if found:
        return [found]
    return [sys.executable, "-m", "wandb"]


def _inspect(run_dir: str | Path, *flags: str) -> str:
    proc = subprocess.run(
        [*_wandb_cli(), "leet", "inspect", *flags, str(run_dir)],
        capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wandb leet inspect failed on {run_dir}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """``wandb leet inspect --summary --json RUN_DIR``: state, exit code, config, summary."""
    return json.loads(_inspect(run_dir, "--summary", "--json"))


def records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's ``.wandb`` transaction log, in order."""
    return [json.loads(line) for line in _inspect(run_dir, "--json").splitlines() if line.strip()]


# `log`: the run's records when the caller has read them already (each read is a subprocess).
def history(run_dir: str | Path, log: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every ``run.log`` call as a flat dict, in order."""
    return [r["history"]["item"] for r in (records(run_dir) if log is None else log) if r.get("type") == "history"]


def staged_files(run_dir: str | Path, log: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Artifact entry path -> local staged file for everything the run handed to W&B for upload."""
    files: dict[str, str] = {}
    for r in records(run_dir) if log is None else log:
        if r.get("type") == "artifact":
            for entry in r["artifact"]["manifest"]["contents"]:
                if entry.get("local_path"):
                    files[entry["path"]] = entry["local_path"]
    return files


def logged_table(run_dir: str | Path, key: str, summary: Mapping[str, Any] | None = None,
                 staged: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The last table logged under ``key`` as ``{"columns", "data"}``, image cells given a ``local_path``;
    None when it was not logged or its staged copy is gone (a synced run). ``summary`` and ``staged``
    spare the reads when the caller has them."""
    # The copy under files/media only names cell types: the full table is the run's table artifact.
    entry = (run_summary(run_dir)["summary"] if summary is None else summary).get(key)
    if not isinstance(entry, Mapping) or "artifact_path" not in entry:
        return None
    staged = staged_files(run_dir) if staged is None else staged
    path = staged.get(entry["artifact_path"].split("/", 3)[-1])  # "<key>.table.json"
    if path is None or not Path(path).is_file():
        return None
    table = json.loads(Path(path).read_text())
    for row in table.get("data", []):
        for cell in row:
            if isinstance(cell, dict) and "path" in cell:
                cell["local_path"] = staged.get(cell["path"])
    return table


def best_value(v: Any, goal: str = "maximize") -> Any:
    """A summary value; a ``define_metric`` summary (``{"max": v}``) gives its value for ``goal``."""
    if isinstance(v, Mapping):
        return next((v[k] for k in _PICK[goal] if k in v), None)
    return v


def rank(items: Iterable[T], value: Callable[[T], float | None], goal: str) -> list[T]:
    """Best first by ``value`` for ``goal`` ("maximize" or "minimize"); items without one (None, NaN) last."""
    sign = -1.0 if goal == "maximize" else 1.0

    def key(item: T) -> tuple[int, float]:
        v = value(item)
        return (1, 0.0) if v is None or math.isnan(v) else (0, sign * v)

    return sorted(items, key=key)


