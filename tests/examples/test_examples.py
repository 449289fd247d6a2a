"""The two examples run as a user runs them, as scripts (offline W&B, two epochs), and what reached the run is
read back. They run in this process, which has torch and W&B imported already: a new interpreter would add only
their import time."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from dlhw.tracking.readback import history, run_summary

pytestmark = pytest.mark.slow  # real runs of the examples: CI runs them

ROOT = Path(__file__).resolve().parents[2]
PANEL_KEYS = {"viz/conv1_filters", "viz/feature_maps", "test/confusion_matrix_table", "wd/weight_norm",
              "wd/decay_factor", "wd/decay_factor_theory", "wd/hessian_top_eig", "wd/stability_bound"}


def run_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``python examples/NAME --epochs 2 --dir TMP`` in TMP with WANDB_MODE=offline; the run's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    script = str(ROOT / "examples" / name)
    monkeypatch.setattr(sys, "argv", [script, "--epochs", "2", "--dir", str(tmp_path)])
    runpy.run_path(script, run_name="__main__")
    return next((tmp_path / "wandb").glob("offline-run-*"))


def logged(run_dir: Path) -> tuple[set[str], list[dict]]:
    rows = history(run_dir)
    return {k.split(".")[0] for r in rows for k in r}, rows


def check_probe(rows: list[dict]) -> None:
    factors = [(r["wd/decay_factor"], r["wd/decay_factor_theory"]) for r in rows if "wd/decay_factor" in r]
    assert factors and all(abs(m - t) < 1e-6 for m, t in factors)  # AdamW: a shrink of exactly 1 - lr*lambda
    steps = [r["wd/step"] for r in rows if "wd/step" in r]
    assert steps == sorted(steps)


def test_plain_loop(tmp_path, monkeypatch):
    run_dir = run_example("plain_loop.py", tmp_path, monkeypatch)
    keys, rows = logged(run_dir)
    assert not PANEL_KEYS - keys
    check_probe(rows)
    assert [r["viz/step"] for r in rows if "viz/conv1_filters._type" in r] == [1, 2]
    assert run_summary(run_dir)["exit_code"] == 0


def test_lightning_loop(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    run_dir = run_example("lightning_loop.py", tmp_path, monkeypatch)
    keys, rows = logged(run_dir)
    assert not (PANEL_KEYS | {"train/loss", "test/acc", "trainer/global_step"}) - keys
    check_probe(rows)
    assert [r["viz/step"] for r in rows if "viz/feature_maps._type" in r] == [1, 2]
