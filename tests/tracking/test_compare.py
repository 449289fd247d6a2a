"""compare's pieces on hand-made records (the end-to-end path is in test_sweep.py)."""

from __future__ import annotations

import matplotlib.image

from launch import main
from dlhw.callbacks.progress import fmt
from dlhw.tracking.compare import RunRecord, differing_keys, plot_series, rank, save_lines


def _rec(name, lr, wd, acc, **config):
    return RunRecord(name=name, state="finished", config={"lr": lr, "weight_decay": wd, "out": f"/x/{name}", **config},
                     summary={"val/acc": {"max": acc}, "val/loss": 1 - acc}, source=name)


RECORDS = [_rec(f"r{i}", lr, wd, 0.9 - 10 * wd - (0.05 if lr == 0.1 else 0.0), epochs=3)
           for i, (lr, wd) in enumerate((lr, wd) for lr in (0.01, 0.1) for wd in (0.0, 1e-4, 1e-3, 5e-3))]


def test_differing_keys_leave_out_bookkeeping_and_constants():
    assert differing_keys(RECORDS) == ["lr", "weight_decay"]


def test_values_and_ranking_follow_the_goal():
    assert RECORDS[0].value("val/acc", "maximize") == 0.9
    assert RECORDS[0].value("val/loss", "minimize") == RECORDS[0].summary["val/loss"]
    assert RECORDS[0].value("missing", "maximize") is None
    assert [r.name for r in rank(RECORDS, lambda r: r.value("val/acc", "maximize"), "maximize")][:2] == ["r0", "r1"]
    assert rank(RECORDS, lambda r: r.value("val/loss", "minimize"), "minimize")[0].name == "r0"
    assert [x for x in rank([None, float("nan"), 1.0, 2.0], lambda x: x, "minimize")][:2] == [1.0, 2.0]
    assert [fmt(v) for v in (None, -0.0, 3, True, 0.123456)] == ["-", "0", "3", "True", "0.1235"]


def test_weight_decay_plot_has_lambda_on_x_and_one_line_per_learning_rate(tmp_path):
    x_key, series = plot_series(RECORDS, ["lr", "weight_decay"], "val/acc", "maximize")
    assert x_key == "weight_decay" and sorted(series) == ["lr=0.01", "lr=0.1"]
    assert [x for x, _ in series["lr=0.1"]] == [0.0, 1e-4, 1e-3, 5e-3]
    assert series["lr=0.1"][0][1] == RECORDS[4].value("val/acc", "maximize")
    save_lines(series, "val/acc vs weight_decay", tmp_path / "wd.png", log_x=True)
    assert matplotlib.image.imread(tmp_path / "wd.png").shape[2] in (3, 4)


def test_no_numeric_parameter_means_no_plot():
    recs = [RunRecord("a", "finished", {"opt": "sgd"}, {"m": 1.0}, "a"),
            RunRecord("b", "finished", {"opt": "adam"}, {"m": 2.0}, "b")]
    assert plot_series(recs, ["opt"], "m", "maximize") is None


def test_cloud_needs_online_mode(capsys):
    assert main(["compare", "--project", "team/dlhw", "--wandb-mode", "offline"]) == 2
    assert "--project reads runs from the W&B cloud" in capsys.readouterr().err
    # With --project, --sweep is a W&B sweep id, not a folder. Reading it needs a server: here no key is set.
    assert main(["compare", "--project", "team/dlhw", "--sweep", "abc123", "--wandb-mode", "offline"]) == 2
    assert "--project reads runs from the W&B cloud" in capsys.readouterr().err
    assert main(["compare", "--project", "team/dlhw", "--sweep", "abc123", "--wandb-mode", "online"]) == 2
    assert "could not read runs of team/dlhw from W&B" in capsys.readouterr().err


def test_nothing_to_compare_is_a_usage_error(capsys, tmp_path):
    assert main(["compare", "--out", str(tmp_path)]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "holds no W&B runs" in capsys.readouterr().err
