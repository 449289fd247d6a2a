"""``launch.py dashboard`` and ``launch.py report`` on the same real offline runs of filters, iou, detect and the
weight-decay sweep (two AlexNet trials), at the smallest settings each accepts, made once for the module in this
process. The dashboard: every view and the Report built with ``--dry-run``, every panel key found among the keys the
runs logged; a renamed key fails the check; no API key and no library are one-line errors. The sweep: both trials of
the real trainer finish and compare ranks them. The report: the filters and iou runs gathered into one page, which a
real headless browser (Debian's chromium) loads with every picture decoded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from launch import main
from tests.conftest import ROOT
from dlhw.tracking.readback import run_summary
from dlhw.tracking.sweep import Sweep
from dlhw.trainers.detection.dataset import generate_pennfudan

pytestmark = pytest.mark.slow  # four experiments run for real: CI runs them, -m "not slow" leaves them out


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard-runs")
    data = generate_pennfudan(out / "data", n=4, seed=1, size=(60, 80))
    Image.new("RGB", (64, 48), (90, 120, 150)).save(out / "photo.png")
    runs = [["filters", "--max-size", "32"],
            ["iou", "--steps", "4", "--batch-size", "2", "--slide-points", "21", "--agreement-boxes", "8"],
            # AlexNet as two trials of the real weight-decay sweep, side by side: each trial is an alexnet run.
            ["sweep", "sweeps/weight_decay.yaml", "--count", "2", "--jobs", "2", *(f"--param={p}" for p in (
                "epochs=1", "limit_batches=1", "batch_size=8", "hessian_iters=1", "hessian_batch=4", "decay_every=1",
                "viz_images=1"))],
            ["detect", "--data", str(data), "--image", str(out / "photo.png"), "--backbone",
             "timm/test_efficientnet", "--levels", "1", "--epochs", "1", "--min-size", "48", "--max-size", "64",
             "--holdout", "1", "--train-eval-images", "1", "--images-per-epoch", "1", "--batch-size", "1",
             "--viz-images", "1", "--weights", "none"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the sweep YAML's program is relative to the repository, as for wandb agent
        for argv in runs:  # each command under a folder of its own, so a test can check one experiment alone
            assert main([*argv, "--out", str(out / argv[0]), "--wandb-mode", "offline"]) == 0, argv
    return out


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dry_run(out):
    """The specs ``dashboard --report --dry-run`` wrote and checked, and what it printed."""
    pytest.importorskip("wandb_workspaces")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["dashboard", "--report", "--dry-run", "--out", str(out)]) == 0
    return {p.stem: json.loads(p.read_text()) for p in (out / "dashboard").glob("*.json")}, printed.getvalue()


@pytest.fixture
def specs(dry_run):
    return dry_run[0]


def test_every_view_and_the_report_name_only_keys_the_runs_logged(dry_run, out):
    from dlhw.tracking.dashboard import EXPERIMENTS

    specs, printed = dry_run
    assert sorted(specs) == ["report", "view-AlexNet", "view-IoU", "view-detection", "view-filters",
                             "view-weight-decay"]
    # The homework's questions, by the keys the experiments really log.
    text = {stem: json.dumps(s) for stem, s in specs.items()}
    for key in ("config:weight_decay.value", "config:lr.value", "summary:val/acc", "wd/decay_factor_theory",
                "wd/lr_sharpness", "wd/stability_bound"):
        assert key in text["view-weight-decay"], key
    for key in ("train/bbox_AP", "val/segm_AP", "detect/photo", "detect/verdict", "detect/predictions", "option.value"):
        assert key in text["view-detection"], key
    for key in ("iou/slide_values_table", "iou/slide_plot", "descent/giou_loss/iou"):
        assert key in text["view-IoU"], key
    for key in ("viz/conv1_filters", "test/confusion_matrix_table", "val/acc"):
        assert key in text["view-AlexNet"], key
    assert "filters/outputs" in text["view-filters"] and "check/gain/sharpen_diagonal/diagonal" in text["view-filters"]
    # The Report quotes docs/theory.md beside one panel grid per experiment.
    theory = (ROOT / "docs" / "theory.md").read_text()
    assert "## 2. Weight decay" in theory and "2. Weight decay" in text["report"]
    grids = [b for b in specs["report"]["spec"]["blocks"] if b.get("type") == "panel-grid"]
    assert len(grids) == len(EXPERIMENTS)
    # Each spec, read back through the library, names many keys, every one logged by a run of its
    # experiment (a view whose experiment has no run would have been an error).
    (checked,) = re.findall(r"dashboard: (\d+) panel keys in 6 spec\(s\), each logged by a local run under", printed)
    assert int(checked) > 150


def test_a_renamed_key_fails_the_dry_run_naming_it(specs, out, tmp_path, capsys):
    renamed = json.dumps(specs["view-weight-decay"]).replace('"wd/stability_bound"', '"wd/stability_bond"')
    assert renamed != json.dumps(specs["view-weight-decay"])
    copy = tmp_path / "view-weight-decay.json"
    copy.write_text(renamed)
    capsys.readouterr()
    # Against the sweep's AlexNet trials alone: the weight-decay view's experiment (fewer runs read back is faster).
    assert main(["dashboard", "--check", str(copy), "--out", str(out / "sweep")]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line == (f"error: view-weight-decay.json (weight decay) names metric key 'wd/stability_bond' that no alexnet "
                    f"run under {out / 'sweep'} logged (did you mean wd/stability_bound?)")


def test_without_a_key_the_save_asks_for_wandb_login(tmp_path, capsys):
    pytest.importorskip("wandb_workspaces")
    # conftest leaves no WANDB_API_KEY and points NETRC at a missing file: no key anywhere.
    assert main(["dashboard", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and _errors(captured.err) == [
        "error: dashboard saves to W&B and needs an API key: run `wandb login` (or set WANDB_API_KEY), or check the "
        "views offline with --dry-run"]


def test_without_the_extra_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    # The missing extra, simulated honestly: the dashboard module imported afresh while its import of
    # wandb_workspaces fails as it would with the package uninstalled (None in sys.modules stops the import system).
    import dlhw.tracking.dashboard  # the module as it is, put back after the test

    for name in [m for m in sys.modules if m.split(".")[0] == "wandb_workspaces"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.delitem(sys.modules, "dlhw.tracking.dashboard")
    monkeypatch.setattr(dlhw.tracking, "dashboard", None)
    assert main(["dashboard", "--dry-run", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _errors(captured.err) == ['error: dashboard needs the wandb-workspaces package: pip install -e ".[dashboard]" '
                                     '(or pip install "wandb-workspaces>=0.4.13")']


def test_the_real_weight_decay_sweep_runs_two_trials_of_the_trainer(out, capsys):
    (directory,) = (out / "sweep" / "sweeps").iterdir()
    sweep = Sweep.load(directory)
    assert [t.state for t in sweep.trials] == ["finished", "finished"], [t.log.read_text()[-2000:] for t in sweep.trials]
    metric = sweep.metric["name"]
    for trial in sweep.trials:
        info = run_summary(trial.run_dir)
        assert info["state"] == "finished" and info["config"]["epochs"] == 1
        assert all(info["config"][k] == v for k, v in trial.values.items())
        assert trial.score(sweep.metric) is not None and metric in info["summary"]
    assert main(["compare", "--sweep", str(directory)]) == 0
    assert (directory / f"compare-{metric.replace('/', '_')}.png").is_file()


@pytest.fixture(scope="module")
def page(out):
    page = out / "report.html"
    assert main(["report", str(out / "filters"), str(out / "iou"), "--output", str(page), "--wandb-mode",
                 "offline"]) == 0
    return page


def test_page_holds_the_runs_results_and_names_the_missing_experiments(page):
    text = page.read_text()
    # Self-contained: every picture is a data URI, nothing is fetched.
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) >= 15 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|file:)', text)
    # The filters table, the IoU kinks beside the hand derivation, the checks that passed.
    assert "filters/outputs" in text and "sharpen_diagonal" in text and "4.211" in text
    assert "iou/kinks" in text and "0.1562" in text and "check/passed" in text
    # No AlexNet or detection run was given: the page names them and how to produce them.
    assert text.count("Missing experiment") == 3
    assert "python launch.py detect" in text and "python launch.py alexnet" in text


def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    proc = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # The page's own load check ran and found every picture decoded.
    assert 'data-broken-images="0"' in dom
    assert len(re.findall(r"<img ", dom)) >= 15 and "<table>" in dom
    assert "Uncaught" not in proc.stderr
    shot = tmp_path / "page.png"
    proc = subprocess.run([browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000
