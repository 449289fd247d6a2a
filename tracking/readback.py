"""Local W&B runs read back as ``wandb leet inspect`` reports them, for compare, report, dashboard and resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from wandb.util import get_core_path

from dlhw.core.errors import UsageError


def _inspect(run_dir: str | Path, *flags: str) -> str:
    # `wandb leet inspect RUN_DIR` runs W&B's core binary as below; called directly, a read skips the CLI's start.
    run_file = next(Path(run_dir).resolve().glob("run-*.wandb"), None)
    if run_file is None:
        raise RuntimeError(f"{run_dir} holds no run-*.wandb file")
    cli = [get_core_path(), "leet", "inspect", "--no-observability", *flags, "--run-file", str(run_file),
           str(run_file.parent.parent)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"wandb leet inspect failed on {run_dir}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """``wandb leet inspect --summary --json RUN_DIR``: state, exit code, config, summary."""
    return json.loads(_inspect(run_dir, "--summary", "--json"))


def records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's ``.wandb`` transaction log, in order."""
    return [json.loads(line) for line in _inspect(run_dir, "--json").splitlines() if line.strip()]


def of_type(log: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The bodies of the records of type ``kind`` ("history", "run", "environment", "artifact", ...)."""
    return [r[kind] for r in log if r.get("type") == kind]


def history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` call as a flat dict, in order."""
    return [h["item"] for h in of_type(records(run_dir), "history")]


def visible(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (a ``define_metric`` summary stays whole), W&B's ``_`` keys left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if prefix or not k.startswith("_"):
            if isinstance(v, Mapping) and not (set(v) & {"max", "min", "last", "mean"}):
                out.update(visible(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
    return out


@dataclass
class RunRecord:
    name: str
    state: str
    config: dict[str, Any]
    summary: dict[str, Any]
    source: str
    params: dict[str, Any] = field(default_factory=dict)  # a sweep trial's parameters
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # a local run's summary as W&B wrote it

    def value(self, metric: str, goal: str = "maximize") -> float | None:
        """The metric's best value for ``goal`` (``define_metric`` keeps several); None when it is not a number."""
        v = self.summary.get(metric)
        if isinstance(v, Mapping):
            v = next((v[k] for k in ("max" if goal == "maximize" else "min", "last", "mean") if k in v), None)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return None
        return float(v)

    @cached_property
    def log(self) -> list[dict[str, Any]]:
        try:
            return records(self.source)
        except RuntimeError:
            return []

    @cached_property
    def command(self) -> str:
        """The ``launch.py`` command that made the run, from its W&B job type (``detect-option1`` is detect's)."""
        return next((r.get("job_type") or "" for r in of_type(self.log, "run")), "").split("-")[0] or "?"

    def table(self, key: str) -> dict[str, Any] | None:
        """The last table logged under ``key``, image cells given a ``local_path``; None when gone (a synced run)."""
        # The copy under files/media only names cell types: the full table is the run's table artifact.
        entry = self.raw.get(key)
        if not isinstance(entry, Mapping) or "artifact_path" not in entry:
            return None
        staged = {e["path"]: e["local_path"] for a in of_type(self.log, "artifact")
                  for e in a["manifest"]["contents"] if e.get("local_path")}
        path = staged.get(entry["artifact_path"].split("/", 3)[-1])  # "<key>.table.json"
        if path is None or not Path(path).is_file():
            return None
        table = json.loads(Path(path).read_text())
        for cell in (c for row in table.get("data", []) for c in row):
            if isinstance(cell, dict) and "path" in cell:
                cell["local_path"] = staged.get(cell["path"])
        return table


def _read_local(run_dir: Path) -> RunRecord:
    info = run_summary(run_dir)
    raw = info.get("summary") or {}
    return RunRecord(name=info.get("name") or info.get("run_id") or run_dir.name, state=info.get("state", "?"),
                     config=visible(info.get("config") or {}), summary=visible(raw), source=str(run_dir), raw=raw)


def local_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """The W&B runs in or under each of ``paths`` (run, wandb/ or --out folders); a UsageError for a path without."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UsageError(f"no such run folder: {p}; pass a W&B run folder, a wandb/ folder or an --out folder")
        # followlinks: a sweep's wandb/ folder links its trials' runs (so a run may be found twice: read once).
        runs = sorted(Path(root) for root, _, files in os.walk(p, followlinks=True)
                      if any(f.startswith("run-") and f.endswith(".wandb") for f in files))
        if not runs:
            raise UsageError(f"{p} holds no W&B runs (no run-*.wandb file below it)")
        found += runs
    with ThreadPoolExecutor(max_workers=4) as pool:  # each read is a subprocess
        return list(pool.map(_read_local, {p.resolve(): p for p in found}.values()))
