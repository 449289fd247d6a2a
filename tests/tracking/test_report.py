"""``launch.py report`` without runs: one line and exit 2. The page built from real runs is tested in
test_dashboard.py, beside the runs it reads."""

from __future__ import annotations

from launch import main


def test_no_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--wandb-mode", "offline"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {tmp_path} holds no W&B runs (no run-*.wandb file below it)"]
