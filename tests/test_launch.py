"""The command line as a user meets it, through ``launch.main`` in this process: global flags, exit codes,
one-line errors, the offline run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch import get_args_parser, main
from tests.conftest import logged_table, only_run_dir
from dlhw.tracking.readback import run_summary


def test_global_flags_work_after_the_subcommand_and_with_underscores():
    p = get_args_parser()
    a = p.parse_args(["--seed", "3", "filters", "--max_size=64", "--wandb_mode=disabled", "--out", "x"])
    assert (a.seed, a.max_size, a.wandb_mode, a.out) == (3, 64, "disabled", "x")
    b = p.parse_args(["--out", "before", "filters"])
    assert b.out == "before" and b.seed == 0


def test_out_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("DLHW_OUT", "/somewhere")
    assert get_args_parser().parse_args(["filters"]).out == "/somewhere"


@pytest.mark.slow
def test_filters_end_to_end_offline(tmp_path, capsys, monkeypatch):
    gray = tmp_path / "gray.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)).save(gray)
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray((np.random.default_rng(1).random((30, 20, 3)) * 255).astype(np.uint8)).save(rgb)
    out = tmp_path / "out"
    # Without a user setting, W&B's staging folder defaults to one under --out.
    monkeypatch.delenv("WANDB_DATA_DIR")
    monkeypatch.delenv("WANDB_CACHE_DIR")
    code = main(["filters", "--image", str(gray), "--image", str(rgb), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "W&B mode: offline (WANDB_MODE)" in err
    run_dir = only_run_dir(out)
    info = run_summary(run_dir)
    assert info["state"] == "finished" and info["config"]["image"] == [str(gray), str(rgb)]
    assert info["summary"]["check/passed"] == 1
    table = logged_table(run_dir, "filters/outputs")
    assert table["columns"][:6] == ["image", "input", "filter", "kernel", "kernel_values", "output"]
    assert len(table["data"]) == 2 * 5
    row = table["data"][0]
    assert row[0] == "gray" and row[2] == "box_blur"
    for cell in (row[1], row[3], row[5]):
        assert cell["_type"] == "image-file" and Path(cell["local_path"]).is_file()
    assert (row[5]["width"], row[5]["height"]) == (50, 40)
    checks = logged_table(run_dir, "filters/checks")
    assert all(r[-1] is True for r in checks["data"])
    # Everything W&B staged for upload stays under --out.
    assert all(Path(c["local_path"]).is_relative_to(out.resolve()) for c in (row[1], row[5]))


def test_diverged_run_is_one_line_and_exit_1(tmp_path, capsys):
    code = main(["alexnet", "--optimizer", "sgd", "--lr", "1e12", "--epochs", "1", "--limit-batches", "4",
                 "--hessian-every", "0", "--viz-images", "0", "--out", str(tmp_path), "--wandb-mode", "disabled"])
    err = capsys.readouterr().err
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: non-finite loss at step 1: loss=nan; lower --lr or check the data"]
    assert "Traceback" not in err
