"""Uploads the IoU experiment: the slide as line plots, a table and a picture, the kinks as a table,
and the two descents as one line plot with a table of where each box ended."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import wandb

from dlhw.core.events import EPOCH_AXIS, Callback, Loop
from dlhw.viz.iou import LABELS, slide_figure


def _r(v: float) -> float:
    return round(float(v), 8)


class IoUPlots(Callback):
    """Logs at the end, never per step: ``iou/slide_values`` and ``iou/slide_grads`` (IoU, GIoU and
    DIoU and their autograd d/dx as B's left edge slides), ``iou/slide`` (each position, with IoU's
    one-sided finite differences), ``iou/slide_plot``, ``iou/kinks`` (where an edge of B meets an
    edge of A: left and right derivative and autograd's), ``iou/descent`` (mean IoU per step under
    each loss) and ``iou/descent_boxes`` (each box's start, end and final IoU per loss)."""

    def on_validation_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        if epoch == trainer.epochs - 1:
            trainer.log(self._descent(trainer), axis=EPOCH_AXIS)

    def on_test_end(self, trainer: Loop, metrics: Mapping[str, float]) -> None:
        trainer.log(self._slide(trainer.results["slide"]), axis=EPOCH_AXIS)

    @staticmethod
    def _slide(s: Any) -> dict:
        x, names = s.x.tolist(), list(s.values)
        rows = [[_r(x[i]), *(c for m in names for c in (_r(s.values[m][i]), _r(s.grads[m][i]))),
                 _r(s.fd_left[i]), _r(s.fd_right[i])] for i in range(len(x))]
        columns = ["x", *(c for m in names for c in (m, f"d_{m}_dx")), "iou_fd_left", "iou_fd_right"]
        kinks = [[k.x, k.edges, _r(k.iou), _r(k.left), _r(k.right), _r(k.right - k.left), _r(k.autograd)]
                 for k in s.kinks]
        picture = slide_figure(s.x.numpy(), {m: v.numpy() for m, v in s.values.items()},
                               {m: g.numpy() for m, g in s.grads.items()}, [k.x for k in s.kinks])
        return {
            "iou/slide": wandb.Table(columns=columns, data=rows),
            "iou/kinks": wandb.Table(columns=["x", "edges", "iou", "left_derivative", "right_derivative", "jump",
                                              "autograd_at_kink"], data=kinks),
            "iou/slide_values": wandb.plot.line_series(
                xs=x, ys=[s.values[m].tolist() for m in names], keys=[LABELS[m] for m in names],
                title="IoU, GIoU and DIoU as B slides across A", xname="x (left edge of B)"),
            "iou/slide_grads": wandb.plot.line_series(
                xs=x, ys=[s.grads[m].tolist() for m in names], keys=[f"d{LABELS[m]}/dx" for m in names],
                title="Autograd derivative along the slide", xname="x (left edge of B)"),
            "iou/slide_plot": wandb.Image(picture, caption=f"A = {list(s.box_a)}, B starts at {list(s.box_b)}"),
        }

    @staticmethod
    def _descent(trainer: Loop) -> dict:
        curves, descents, starts = (trainer.results[k] for k in ("curves", "descents", "starts"))
        names = list(curves)
        finals = {n: (d.boxes(), d.iou()) for n, d in descents.items()}
        rows = []
        for i, start in enumerate(starts.tolist()):
            row = [i, [_r(v) for v in start]]
            for boxes, iou in (finals[n] for n in names):
                row += [[_r(v) for v in boxes[i].tolist()], _r(iou[i])]
            rows.append(row)
        return {
            "iou/descent": wandb.plot.line_series(
                xs=list(range(1, len(curves[names[0]]) + 1)), ys=[curves[n] for n in names],
                keys=[f"{n}: mean IoU" for n in names], title="Mean IoU with the target, from disjoint starts",
                xname="step"),
            "iou/descent_boxes": wandb.Table(
                columns=["box", "start", *(c for n in names for c in (f"{n}_end", f"{n}_iou"))], data=rows),
        }
