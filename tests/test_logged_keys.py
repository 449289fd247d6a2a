"""Nothing a trainer reports is lost on the way to W&B: each command run small, in process, with
every ``Session.log`` call (training loops and plain experiments alike) recorded, then the offline
run read back with ``wandb leet inspect``. AlexNet's run is test_alexnet_cli.py's digits run, checked there."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections import defaultdict
from contextlib import contextmanager

import pytest

from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.core.events import EPOCH_AXIS, Session
from launch import get_args_parser, main
from dlhw.tracking.readback import history, records, run_summary
from dlhw.trainers.detection.dataset import generate_pennfudan
from dlhw.trainers.detection.trainer import DetectSettings
from dlhw.trainers.filters import FiltersSettings, filters_settings
from dlhw.trainers.iou import IoUSetup, setup_from_args
from dlhw.trainers.settings import make


@contextmanager
def recorded_logs():
    """Session -> [(axis, metrics)] for every ``Session.log`` call while open, the calls themselves unchanged."""
    calls: dict[Session, list] = defaultdict(list)
    original = Session.log

    def recording_log(self, metrics, *, axis="trainer/step"):
        calls[self].append((axis, dict(metrics)))
        original(self, metrics, axis=axis)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Session, "log", recording_log)
        yield calls


@pytest.fixture
def reported():
    with recorded_logs() as calls:
        yield calls


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_run(engine: Session, calls: list) -> tuple[set, set]:
    """Assert the run holds every reported key and each number's final value; return (reported, in run)."""
    last, axis_of = {}, {}
    for axis, metrics in calls:
        last.update(metrics)
        axis_of.update(dict.fromkeys(metrics, axis))
    logger = engine.find_callback(WandbLogger)
    info = run_summary(logger.run_dir)
    summary = info["summary"]
    # History rows are flat: a table or picture shows as its fields, "filters/checks._type", ...
    # A custom chart (wandb.plot.line) is stored as its data, "<key>_table".
    in_history = {k.split(".")[0] for row in history(logger.run_dir) for k in row}
    in_history |= {k.removesuffix("_table") for k in in_history}
    # One-off numbers (an epoch-axis number of a single-epoch fit) live in the summary only.
    monitored = logger.monitor[0] if logger.monitor else None
    one_off = {k for k, a in axis_of.items()
               if a == EPOCH_AXIS and engine.epochs == 1 and _number(last[k]) and k != monitored}
    assert set(last) - one_off <= in_history, f"missing from history: {sorted(set(last) - one_off - in_history)}"
    in_summary = set(summary) | {k.removesuffix("_table") for k in summary}
    assert set(last) <= in_summary, f"missing from the summary: {sorted(set(last) - in_summary)}"
    if monitored is not None:  # the summary holds the monitored metric's best, a plain number for sweeps
        best = (max if logger.monitor[1] == "max" else min)(m[monitored] for _, m in calls if monitored in m)
        last[monitored] = best
    for key, value in last.items():
        got = summary.get(key)
        if _number(value) and not isinstance(got, dict) and math.isfinite(value):
            assert got == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert info["exit_code"] == engine.exit_code
    return set(last), (in_history | in_summary) & set(last)


def _as_stored(config: dict) -> dict:
    """A config as W&B stores it (tuples as lists), without the ``_``-prefixed keys dashboards hide."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if not k.startswith("_")}


def check_config(calls, cls: type, argv: list[str] | None = None, resolve=None) -> None:
    """Each run's W&B config is exactly a resolved ``cls`` instance, the one the trainer was built from;
    with ``resolve``, the one that resolving ``argv`` again gives."""
    for engine in calls:
        stored = _as_stored(run_summary(engine.find_callback(WandbLogger).run_dir)["config"])
        used = make(cls, json.loads(json.dumps(_as_stored(engine.config))))
        assert stored == _as_stored(dataclasses.asdict(used))
        assert set(stored) == {f.name for f in dataclasses.fields(cls)}
        if resolve is not None:
            assert used == resolve(get_args_parser().parse_args(argv))


def check_runs(calls):
    assert calls, "no trainer ran"
    for engine, engine_calls in calls.items():
        keys, found = compare_run(engine, engine_calls)
        assert keys == found and keys
    return calls


def test_filters_keys(reported, tmp_path):
    # Default --log-every (10): the second and third photo's step metrics used to be dropped.
    argv = ["filters", "--out", str(tmp_path), "--max-size", "48"]
    assert main(argv) == 0
    check_config(reported, FiltersSettings, argv, filters_settings)
    (calls,) = check_runs(reported).values()
    photos = {k.split("/")[1] for _, m in calls for k in m if k.startswith("image/")}
    assert len(photos) == 3


def test_iou_keys_last_step_sent(reported, tmp_path):
    argv = ["iou", "--out", str(tmp_path), "--steps", "23", "--batch-size", "2", "--slide-points", "41"]
    assert main(argv) == 0
    check_config(reported, IoUSetup, argv, setup_from_args)
    (engine,) = check_runs(reported)
    steps = [r["trainer/step"] for r in history(engine.find_callback(WandbLogger).run_dir) if "trainer/step" in r]
    assert steps[-1] == engine.global_step - 1  # the last step of the fit, not the last multiple of 10


def dataset_references(run_dir):
    """The dataset artifacts of a run: name -> [(reference URI, checksum)]."""
    found = {}
    for r in records(run_dir):
        a = r.get("artifact") if r.get("type") == "artifact" else None
        if a and a["type"] == "dataset":
            found[a["name"]] = [(e["ref"], e["digest"]) for e in a["manifest"]["contents"]]
    return found


@pytest.mark.slow
def test_detect_keys(reported, tmp_path, monkeypatch):
    data = generate_pennfudan(tmp_path / "data", n=5, seed=1, size=(60, 80))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the prediction pictures are written
    assert main(["detect", "--out", str(tmp_path / "out"), "--data", str(data), "--skip-photo",
                 "--backbone", "timm/test_efficientnet", "--levels", "1", "--epochs", "1", "--min-size", "64",
                 "--max-size", "96", "--holdout", "2", "--train-eval-images", "1", "--images-per-epoch", "0",
                 "--viz-images", "1", "--weights", "none"]) == 0
    check_config(reported, DetectSettings)
    engines = check_runs(reported)
    assert len(engines) == 2
    assert sorted(e.config["option"] for e in engines) == ["1", "2"]
    for engine in engines:
        assert list(dataset_references(engine.find_callback(WandbLogger).run_dir)) == ["penn-fudan"]
    assert not list(scratch.glob("dlhw-pictures-*"))  # the temporary pictures are gone with the runs
