"""Shared fixtures. No test may reach the network: W&B points at an address that cannot answer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process: pytest-xdist runs a worker per core and many tests start training processes of
# their own, so torch's default of a thread per core has them spin against each other (about a fifth of the
# suite's CPU time). Set before torch is imported here; the processes tests start inherit it.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _offline_wandb(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("wandb-home")
    os.environ.update(
        WANDB_BASE_URL="http://127.0.0.1:9",  # discard port: nothing listens, nothing leaves
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DISABLE_GIT="true",
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_CACHE_DIR=str(home / "cache"),
        NETRC=str(home / "no-netrc"),
    )
    os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def launch_cmd() -> list[str]:
    """How to run ``launch.py`` in a subprocess with this interpreter."""
    return [sys.executable, str(ROOT / "launch.py")]


def only_run_dir(out: Path) -> Path:
    """The single W&B run folder under ``out/wandb``."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one run under {out}, found {runs}"
    return runs[0]


def artifacts(run_dir: Path) -> list[dict]:
    """The artifacts a run logged: name, type, aliases, metadata and entry paths."""
    import json

    from dlhw.tracking.readback import records

    return [{"name": a.get("name"), "type": a.get("type"), "aliases": a.get("aliases", []),
             "metadata": json.loads(a.get("metadata") or "{}"), "files": [e["path"] for e in a["manifest"]["contents"]]}
            for a in (r["artifact"] for r in records(run_dir) if r.get("type") == "artifact")]


def logged_table(run_dir: Path, key: str) -> dict | None:
    """The last table a run logged under ``key``, as compare and report read it."""
    from dlhw.tracking.readback import local_runs

    return local_runs([Path(run_dir)])[0].table(key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Files with slow tests first: pytest-xdist hands whole files to the workers in this order
    # (--no-loadscope-reorder), so the long ones start early and the many short ones even out the end.
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
