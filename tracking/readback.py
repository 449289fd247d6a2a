"""Reading a local run back: what it logged, as W&B itself reports it (``wandb leet inspect``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


def records(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of the run's ``.wandb`` transaction log, in order."""
    for line in _inspect(run_dir, "--json").splitlines():
        if line.strip():
            yield json.loads(line)


def history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` call as a flat dict, in order."""
    return [r["history"]["item"] for r in records(run_dir) if r.get("type") == "history"]


def staged_files(run_dir: str | Path) -> dict[str, str]:
    """Artifact entry path -> local staged file for everything the run handed to W&B for upload."""
    files: dict[str, str] = {}
    for r in records(run_dir):
        if r.get("type") == "artifact":
            for entry in r["artifact"]["manifest"]["contents"]:
                if entry.get("local_path"):
                    files[entry["path"]] = entry["local_path"]
    return files


def artifacts(run_dir: str | Path) -> list[dict[str, Any]]:
    """The artifacts the run logged: name, type, aliases, metadata and entry paths."""
    out = []
    for r in records(run_dir):
        if r.get("type") == "artifact":
            a = r["artifact"]
            out.append({"name": a.get("name"), "type": a.get("type"), "aliases": a.get("aliases", []),
                        "metadata": json.loads(a.get("metadata") or "{}"),
                        "files": [e["path"] for e in a["manifest"]["contents"]]})
    return out


def logged_table(run_dir: str | Path, key: str) -> dict[str, Any]:
    """The last table logged under ``key``, with its images as the staged files W&B will upload.

    W&B writes the full table (cells with image references) into the run's table artifact; the
    copy under ``files/media`` only names cell types. This returns ``{"columns", "data"}`` from
    the artifact, and each image cell gets a ``local_path``.
    """
    summary = run_summary(run_dir)["summary"]
    if key not in summary:
        raise KeyError(f"{key!r} was not logged in {run_dir}")
    entry = summary[key]["artifact_path"].split("/", 3)[-1]  # "<key>.table.json"
    staged = staged_files(run_dir)
    table = json.loads(Path(staged[entry]).read_text())
    for row in table["data"]:
        for cell in row:
            if isinstance(cell, dict) and "path" in cell:
                cell["local_path"] = staged.get(cell["path"])
    return table
