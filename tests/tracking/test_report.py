"""``launch.py report``: real offline runs of `filters` and `iou` gathered into one page, which a
real headless browser (Debian's chromium) loads with every picture decoded."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from launch import main
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def runs_out(tmp_path_factory):
    launch_cmd = [sys.executable, str(ROOT / "launch.py")]
    out = tmp_path_factory.mktemp("report-runs")
    for argv in (["filters", "--max-size", "64"],
                 ["iou", "--steps", "20", "--batch-size", "3", "--slide-points", "81"]):
        proc = subprocess.run([*launch_cmd, *argv, "--out", str(out), "--wandb-mode", "offline"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def page(runs_out):
    assert main(["report", "--out", str(runs_out), "--wandb-mode", "offline"]) == 0
    return runs_out / "report.html"


@pytest.mark.slow
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


def test_no_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--wandb-mode", "offline"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {tmp_path} holds no W&B runs (no run-*.wandb file below it)"]


@pytest.mark.slow
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
