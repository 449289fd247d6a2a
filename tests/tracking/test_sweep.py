"""``launch.py sweep`` on a tiny trial program: real W&B offline runs, the real sweeps engine (two trials of the
real trainer are in test_dashboard.py, which reads them for the weight-decay view)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launch import main
from tests.conftest import ROOT
from dlhw.tracking.compare import local_runs
from dlhw.tracking.readback import records, run_summary
from dlhw.tracking.sweep import Sweep, Trial, load_config

PROGRAM = str(ROOT / "tests" / "tracking" / "trial_program.py")


def write_sweep(path: Path, **config) -> Path:
    config.setdefault("program", PROGRAM)
    path.write_text(yaml.safe_dump(config))
    return path


def sweep_dirs(out: Path) -> list[Path]:
    return sorted((out / "sweeps").iterdir())


def run_sweep(out: Path, *args: str) -> tuple[int, Sweep]:
    code = main(["sweep", *args, "--out", str(out), "--wandb-mode", "offline"])
    (directory,) = sweep_dirs(out)
    return code, Sweep.load(directory)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 4-point grid (x: 2 values, y: 2) run two at a time."""
    tmp = tmp_path_factory.mktemp("grid")
    cfg = write_sweep(tmp / "grid.yaml", name="tiny-grid", method="grid", metric={"name": "score", "goal": "maximize"},
                      parameters={"x": {"values": [1, 3]}, "y": {"values": [0.0, 0.5]}, "steps": {"value": 2}})
    code, sweep = run_sweep(tmp / "out", str(cfg), "--jobs", "2")
    assert code == 0
    return sweep


def test_grid_of_four_leaves_four_offline_runs_with_their_configs(grid):
    assert [t.state for t in grid.trials] == ["finished"] * 4
    points = {(t.values["x"], t.values["y"]) for t in grid.trials}
    assert points == {(x, y) for x in (1, 3) for y in (0.0, 0.5)}
    by_dir = {t.run_dir: t for t in grid.trials}
    for rec in local_runs([Path(d) for d in by_dir]):
        trial = by_dir[rec.source]
        assert rec.state == "finished"
        assert {k: rec.config[k] for k in ("x", "y", "steps")} == trial.values  # via WANDB_SWEEP_PARAM_PATH
        assert rec.summary["score"] == trial.values["x"] * 2 + trial.values["y"]  # a plain number
    run = next(r for r in records(grid.trials[0].run_dir) if r["type"] == "run")["run"]
    assert (run["run_id"], run["run_group"]) == (grid.trials[0].run_id, "tiny-grid")
    assert run.get("job_type", "") == ""  # the command's own job type, as under wandb agent
    assert "sweep_id" not in run  # no sweep id the W&B server never saw
    for t in grid.trials:  # one folder per trial, under the sweep's folder
        assert Path(t.out_dir).parent == grid.directory / "trials" and Path(t.log).is_file()
        assert Path(t.run_dir).parent == Path(t.out_dir) / "wandb"
    assert not list(grid.directory.glob(".sweep.json.*"))  # atomic writes leave no temporary files


def test_trials_run_the_agents_command_and_rank_by_the_metric(grid):
    best = grid.ranked()[0]
    assert best.values == {"x": 3, "y": 0.5, "steps": 2} and best.score(grid.metric) == 6.5
    assert best.command == ["/usr/bin/env", "python", PROGRAM, "--steps=2", "--x=3", "--y=0.5"]
    # read from the trial's metric file as it ran, on the trial's own steps
    assert grid.trials[0].history == [{"step": 0, "score": 1.0}, {"step": 1, "score": 2.0}]
    assert grid.trials[0].summary == {"score": 2.0}


def test_compare_ranks_the_sweep_and_writes_the_plot(grid, capsys, tmp_path):
    assert main(["compare", "--sweep", str(grid.directory)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "finished" in line]
    assert len(rows) == 4 and "6.5" in rows[0] and rows[-1].split("│")[-2].strip() == "2"
    png = grid.directory / "compare-score.png"
    assert f"plot: {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same runs read straight from their folders (wandb leet inspect), with a chosen plot path.
    plot = tmp_path / "p.png"
    assert main(["compare", str(grid.directory / "trials"), "--metric", "score", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "┃ run" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["#", "run", "state", "x", "y", "score"]  # steps: same in all
    assert plot.is_file() and out.count("finished") == 4


def test_bayes_honours_count(tmp_path):
    cfg = write_sweep(tmp_path / "s.yaml", method="bayes", metric={"name": "score", "goal": "maximize"},
                      parameters={"x": {"min": 0.0, "max": 1.0}, "steps": {"value": 1}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg), "--count", "2", "--jobs", "2")
    assert code == 0 and [t.state for t in sweep.trials] == ["finished", "finished"]
    xs = [t.values["x"] for t in sweep.trials]
    assert all(0.0 <= x <= 1.0 for x in xs) and xs[0] != xs[1]


def test_hyperband_stops_the_trial_that_lags(tmp_path):
    # Run one at a time, the laggard last: its thresholds come from the two finished trials. The
    # laggard logs 3 of its 4 rows and then waits until it is stopped, so hyperband's decision never
    # races the trial's end, however slowly the machine reads its rows back.
    cfg = write_sweep(tmp_path / "hb.yaml", method="grid", metric={"name": "score", "goal": "maximize"},
                      early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
                      parameters={"x": {"values": [3, 2, 0.1]}, "steps": {"value": 4}, "hold_x": {"value": 0.1},
                                  "hold_at": {"value": 3}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg))
    assert code == 0
    assert [t.state for t in sweep.trials] == ["finished", "finished", "stopped"]
    laggard = sweep.trials[2]
    assert [row["step"] for row in laggard.history] == [0, 1, 2] and "STOP" in laggard.note
    assert laggard.exit_code == -15  # the agent's SIGTERM; not a failure
    assert (Path(laggard.out_dir) / "held").is_file()
    assert run_summary(laggard.run_dir)["state"] != "running"  # its W&B run was closed, not left dangling


def test_a_real_sweep_id_attaches_the_trials_to_it(tmp_path):
    cfg = write_sweep(tmp_path / "one.yaml", method="grid", parameters={"x": {"values": [1]}, "steps": {"value": 1}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg), "--sweep-id", "team/proj/abc123de")
    run = next(r for r in records(sweep.trials[0].run_dir) if r["type"] == "run")["run"]
    assert code == 0 and (run["sweep_id"], run["entity"], run["project"]) == ("abc123de", "team", "proj")
    assert (sweep.directory / "wandb" / f"sweep-{sweep.local_id}" / f"config-{sweep.trials[0].run_id}.yaml").is_file()


def test_crash_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    cfg = write_sweep(tmp_path / "c.yaml", method="grid", metric={"name": "score", "goal": "maximize"},
                      parameters={"crash": {"values": [True, False]}, "steps": {"value": 1}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg))
    crashed, fine = sweep.trials
    assert code == 0 and (crashed.state, fine.state) == ("failed", "finished")
    assert crashed.exit_code == 3 and str(crashed.log) in crashed.note
    assert "crashing on purpose" in crashed.log.read_text()
    assert run_summary(crashed.run_dir)["exit_code"] == 3
    err = capsys.readouterr().err
    assert f"trial 0 failed (exit code 3; log: {crashed.log})" in err
    assert f"best: trial 1 (run {fine.run_id}); reproduce: python {PROGRAM} --crash=False --steps=1" in err


def test_repeated_immediate_failures_stop_the_sweep(tmp_path, capsys):
    cfg = write_sweep(tmp_path / "f.yaml", method="grid",
                      command=["${env}", "${interpreter}", "-c", "raise SystemExit(5)", "${args}"],
                      parameters={"x": {"values": [1, 2, 3, 4, 5, 6]}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg))
    assert code == 1 and [t.state for t in sweep.trials] == ["failed"] * 3
    err = capsys.readouterr().err
    assert "error: 3 trials failed within the first 60 s, so the sweep stops" in err
    assert str(sweep.trials[-1].log) in err


def error_line(capsys) -> str:
    """The one ``error:`` line a usage error prints, checked to be the last line and alone."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    return lines[-1]


def test_schema_violations_are_one_numbered_line_naming_each_key(tmp_path, capsys):
    bad = write_sweep(tmp_path / "bad.yaml", method="grdi", metric={"name": "acc", "goal": "up"},
                      parameters={"lr": {"min": 1.0, "max": 0.1}})
    assert main(["sweep", str(bad), "--out", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {bad} is not a valid W&B sweep: (1) method: 'grdi' is not one of [")
    assert "; (2) metric.goal: 'up' is not one of [" in line
    assert line.count("lr: min 1.0 is not less than max 0.1") == 1  # the engine reports it twice
    assert line.endswith("; fix the file (see https://docs.wandb.ai/guides/sweeps/define-sweep-configuration)")
    assert not (tmp_path / "sweeps").exists()


BAD_FILES = {
    "syntax": (b"method: [grid\n", "is not valid YAML at line 2, column 1: expected ',' or ']', but got "
               "'<stream end>' (while parsing a flow sequence from line 1); fix the file there"),
    "indentation": (b"method: grid\n  metric: x\n", "is not valid YAML at line 2, column 9: mapping values are "
                    "not allowed here; fix the file there"),
    "a list": (b"- grid\n", "is not a valid W&B sweep: the file must hold a mapping of sweep keys"),
    "empty": (b"", "is not a valid W&B sweep: the file must hold a mapping of sweep keys"),
    "binary": (b"\x89PNG\r\n\x1a\n", "is not a text file (byte 0 is not UTF-8); pass a W&B sweep YAML"),
}


@pytest.mark.parametrize("content, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_malformed_sweep_files_are_one_line_errors(content, expected, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert error_line(capsys).startswith(f"error: {path} {expected}")
    # --out is created and proven writable before any work; a bad file writes nothing inside it.
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("config, expected", [
    ({"method": "grid", "parameters": {"lr": {"min": 0.0, "max": 1.0}}}, "Grid search requires all parameters"),
    ({"method": "bayes", "parameters": {"lr": {"min": 0.0, "max": 1.0}}}, 'Bayesian search requires "metric" section'),
    ({"method": "grid", "early_terminate": {"type": "hyperband", "min_iter": 2}, "parameters": {"a": {"value": 1}}},
     'early terminate requires "metric" section'),
    ({"method": "custom", "parameters": {"a": {"value": 1}}}, "Invalid search type custom"),
    ({"method": "grid", "program": "no_such_script.py", "parameters": {"a": {"values": [1]}}},
     "program 'no_such_script.py' is not a file"),
])
def test_what_the_engine_would_refuse_is_caught_up_front(config, expected, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"program": PROGRAM, **config}))
    assert main(["sweep", str(path), "--out", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err


def test_missing_files_and_bad_resume_folders_are_one_line_errors(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert error_line(capsys) == (f"error: sweep file not found: {tmp_path / 'missing.yaml'}; pass a W&B sweep YAML "
                                  "such as sweeps/weight_decay.yaml")
    assert main(["sweep", str(tmp_path)]) == 2
    assert error_line(capsys).startswith(f"error: {tmp_path} is a folder; pass a W&B sweep YAML")
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "holds no sweep (sweep.json missing or unreadable)" in error_line(capsys)
    (tmp_path / "sweep.json").write_text('{"version": 99, "config": {}}')
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "was written by a newer version of this suite (format 99, this one reads up to 3)" in error_line(capsys)
    (tmp_path / "sweep.json").write_text("[1, 2]")
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "sweep.json is not a sweep's state" in error_line(capsys)
    assert main(["sweep", str(tmp_path / "x.yaml"), "--jobs", "0"]) == 2
    assert error_line(capsys) == "error: --jobs must be at least 1, got 0"


def test_a_resumed_attempts_rows_replace_what_came_after_its_checkpoint(tmp_path):
    trial = Trial(index=0, run_id="r", params={}, out_dir=str(tmp_path))
    # The first attempt reported steps 0-3 (checkpoint at 1); the second goes on from step 2.
    trial.metric_file.write_text("".join(f"[{i}, {float(i)}]\n" for i in range(4)) + "[2, 20.0]\n[3, 3")
    assert trial.read_metric("score") and [r["score"] for r in trial.history] == [0.0, 1.0, 20.0]
    with open(trial.metric_file, "a") as fh:  # the half-written line is read once it is whole
        fh.write("0.0]\n[4, 40.0]\n")
    assert trial.read_metric("score") and not trial.read_metric("score")
    assert [(r["step"], r["score"]) for r in trial.history] == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    assert trial.summary == {"score": 40.0}


def test_run_cap_ends_a_random_sweep(tmp_path):
    cfg = write_sweep(tmp_path / "s.yaml", method="random", run_cap=2, parameters={"x": {"min": 0.0, "max": 1.0},
                                                                                  "steps": {"value": 1}})
    code, sweep = run_sweep(tmp_path / "out", str(cfg), "--jobs", "2")
    assert code == 0 and [t.state for t in sweep.trials] == ["finished", "finished"]
    xs = [t.values["x"] for t in sweep.trials]
    assert all(0.0 <= x <= 1.0 for x in xs) and xs[0] != xs[1]


@pytest.mark.parametrize("param", [{"value": None}, {"values": [1, {"lr": 0.1}]}, {"parameters": {"a": {"value": 1}}}])
def test_none_and_mapping_values_are_refused_in_one_line(param, tmp_path, capsys):
    cfg = write_sweep(tmp_path / "s.yaml", method="grid", parameters={"x": param})
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "parameters.x: a None or mapping value reaches the program as" in error_line(capsys)


def test_pinned_parameters_keep_the_yaml_valid(tmp_path):
    cfg = write_sweep(tmp_path / "p.yaml", method="grid", parameters={"lr": {"values": [0.1, 0.01]}})
    config = load_config(cfg, ["epochs=1", "lr=0.5"])
    assert config["parameters"] == {"lr": {"value": 0.5}, "epochs": {"value": 1}}

