"""`launch.py iou` as a user runs it: its console summary and its offline run read back."""

from __future__ import annotations

import pytest

from launch import main
from tests.conftest import logged_table, only_run_dir
from dlhw.tracking.readback import history, run_summary


@pytest.mark.slow
def test_iou_end_to_end_offline(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["iou", "--out", str(out), "--steps", "40", "--batch-size", "3", "--slide-points", "81", "--log_every=1",
                 "--wandb-mode", "offline"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "iou: summary" in printed.out and "eval/giou_loss/mean_iou" in printed.out
    run_dir = only_run_dir(out)
    info = run_summary(run_dir)
    assert info["state"] == "finished" and info["config"]["steps"] == 40
    summary = info["summary"]
    assert summary["check/passed"] == 1 and summary["check/max_abs_diff_vs_torchvision"] <= 1e-6
    assert summary["eval/iou_loss/mean_iou"] == 0 and summary["eval/giou_loss/mean_iou"] > 0.1

    kinks = logged_table(run_dir, "iou/kinks")
    assert kinks["columns"][:5] == ["x", "edges", "iou", "left_derivative", "right_derivative"]
    assert [r[0] for r in kinks["data"]] == [-2, 0, 2, 4]
    assert [r[3] for r in kinks["data"]] == pytest.approx([0, 0.15625, 0, -0.1], abs=1e-5)
    assert [r[4] for r in kinks["data"]] == pytest.approx([0.1, 0, -0.15625, 0], abs=1e-5)

    table = logged_table(run_dir, "iou/slide")
    assert table["columns"] == ["x", "iou", "d_iou_dx", "giou", "d_giou_dx", "diou", "d_diou_dx",
                                "iou_fd_left", "iou_fd_right"]
    assert len(table["data"]) == 81  # the kinks are on the 81-point grid already
    # The line plots are W&B custom charts; their data is the `<key>_table` W&B stores beside them.
    grads = logged_table(run_dir, "iou/slide_grads_table")
    assert {r[1] for r in grads["data"]} == {"dIoU/dx", "dGIoU/dx", "dDIoU/dx"}
    descent = logged_table(run_dir, "iou/descent_table")
    assert len(descent["data"]) == 2 * 40
    boxes = logged_table(run_dir, "iou/descent_boxes")
    assert len(boxes["data"]) == 3 and all(row[3] == 0 for row in boxes["data"])  # iou_loss_iou

    steps = [r for r in history(run_dir) if "descent/iou_loss/grad_norm" in r]
    assert len(steps) == 40 and all(r["descent/iou_loss/grad_norm"] == 0 for r in steps)
    assert steps[-1]["descent/giou_loss/loss"] < steps[0]["descent/giou_loss/loss"]


def test_inverted_box_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["iou", "--box-a", "4", "0", "0", "4", "--out", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: --box-a [4.0, 0.0, 0.0, 4.0] has x2 < x1 or y2 < y1; "
                      "give the top-left corner (x1, y1) first"]
    assert not (tmp_path / "wandb").exists()
