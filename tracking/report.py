"""One self-contained HTML page of the homework's answers from local W&B runs: pictures inline, so it can be mailed."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dlhw.callbacks.progress import fmt
from dlhw.core.files import atomic_file
from dlhw.tracking.compare import differing_keys, plot_series, save_lines
from dlhw.tracking.readback import RunRecord, local_runs, of_type

# The theory's numbers (docs/theory.md), shown beside what the runs measured.
KINK_THEORY = {-2.0: (0.0, 0.1), 0.0: (40 / 256, 0.0), 2.0: (0.0, -40 / 256), 4.0: (-0.1, 0.0)}
SHARPENER_SPACING = {"sharpen_horizontal": dict(horizontal=1.0, vertical=0.0, diagonal=2**-0.5, antidiagonal=2**-0.5),
                     "sharpen_vertical": dict(horizontal=0.0, vertical=1.0, diagonal=2**-0.5, antidiagonal=2**-0.5),
                     "sharpen_diagonal": dict(horizontal=1.0, vertical=1.0, diagonal=2**0.5, antidiagonal=0.0)}
WD_METRICS = ("val/acc", "test/acc", "wd/weight_norm", "wd/decay_factor", "wd/decay_factor_theory",
              "wd/lr_sharpness", "wd/stability_bound")


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _not_found(key: str) -> str:
    return f'<p class="missing">{_esc(key)} not found in this run.</p>'


def _data_uri(path: str | Path, max_side: int = 1024) -> str:
    # At most max_side pixels a side (full photos would make the page tens of MB); JPEG unless small or transparent.
    with Image.open(path) as picture:
        if max(picture.size) <= max_side and picture.format == "PNG" and Path(path).stat().st_size < 200_000:
            return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf, kind = io.BytesIO(), "png" if picture.mode in ("RGBA", "LA", "P") else "jpeg"
        (picture if kind == "png" else picture.convert("RGB")).save(buf, format=kind, optimize=True, quality=88)
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode()


def _img(path: str | Path | None, alt: str, width: int | None = None) -> str:
    if path is None or not Path(path).is_file():
        return f'<span class="missing">{_esc(alt)}: picture not stored locally</span>'
    w = f' width="{width}"' if width else ""
    # Twice the shown width keeps it sharp on high-density screens.
    return f'<img src="{_data_uri(path, 2 * width if width else 1024)}" alt="{_esc(alt)}"{w}>'


def _logged_image(run: RunRecord, key: str) -> str:
    entry = run.raw.get(key)
    found = isinstance(entry, Mapping) and entry.get("_type") == "image-file"
    return _img(Path(run.source) / "files" / entry["path"] if found else None, key)


def _boxed_image(cell: Mapping[str, Any], path: str, alt: str) -> str:
    w, h = cell.get("width", 1), cell.get("height", 1)
    shapes = []
    colours = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00")
    for i, (layer, boxes) in enumerate(cell["boxes"].items()):
        for b in boxes:  # as a table artifact stores them: corners in pixels
            p = b["position"]
            x, y, bw, bh = p["minX"], p["minY"], p["maxX"] - p["minX"], p["maxY"] - p["minY"]
            shapes.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{bh:.1f}" fill="none" '
                          f'stroke="{colours[i % len(colours)]}" stroke-width="{max(w, h) / 300:.1f}">'
                          f'<title>{_esc(layer)}: {_esc(b.get("box_caption", ""))}</title></rect>')
    return (f'<svg viewBox="0 0 {w} {h}" width="{min(w, 480)}" role="img" aria-label="{_esc(alt)}">'
            f'<image href="{_data_uri(path, 960)}" width="{w}" height="{h}"/>{"".join(shapes)}</svg>')


def _cell(v: Any, alt: str) -> str:
    if isinstance(v, Mapping) and v.get("_type") == "image-file":
        path = v.get("local_path")
        if v.get("boxes") and path and Path(path).is_file():
            return _boxed_image(v, path, alt)
        return _img(path, alt, width=160)
    if isinstance(v, list):
        return _esc(json.dumps([round(x, 4) if isinstance(x, float) else x for x in v]))
    return _esc(fmt(v))


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    """A plain HTML table; image cells become embedded pictures."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v, f'{caption} {c}')}</td>" for c, v in zip(columns, r)) + "</tr>"
                   for r in rows)
    return f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_html(run: RunRecord, key: str, caption: str | None = None, reshape: Callable | None = None) -> str:
    """``key``'s table as HTML, its ``(columns, rows)`` passed through ``reshape``; or a line saying it is missing."""
    t = run.table(key)
    if t is None:
        return _not_found(key)
    return html_table(*(reshape or (lambda *table: table))(t["columns"], t["data"]), caption or key)


def _png(series: Mapping[str, list[tuple[float, float]]], title: str, **kwargs: Any) -> str:
    buf = io.BytesIO()
    save_lines(series, title, buf, size=(6.5, 3.6), **kwargs)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="{_esc(title)}">'


def line_series_plot(run: RunRecord, key: str, title: str) -> str:
    """A W&B line-series chart (its ``step, lineKey, lineVal`` table) drawn as a PNG."""
    t = run.table(key)
    if t is None:
        return _not_found(key)
    series: dict[str, list[tuple[float, float]]] = {}
    for x, name, y in (r[:3] for r in t["data"]):
        series.setdefault(name, []).append((x, y))
    return _png(series, title, marker=None)


def section_filters(runs: list[RunRecord]) -> str:
    run = runs[-1]
    rows = [[name, d, 3 - 2 * math.cos(2 * math.pi * s / 4), run.value(f"check/gain/{name}/{d}")]
            for name, spacing in SHARPENER_SPACING.items() for d, s in spacing.items()]
    return "".join([
        f"<p>Run {_esc(run.name)}: <code>check/passed</code> = {_esc(fmt(run.value('check/passed')))}.</p>",
        table_html(run, "filters/outputs"), table_html(run, "filters/checks"),
        html_table(["filter", "grating direction", "theory 3 - 2cos(2πs/4)", "measured gain"], rows,
                   "sharpener gains at a 4-pixel period: theory beside measurement"),
    ])


def section_weight_decay(runs: list[RunRecord]) -> str:
    keys = [k for k in differing_keys(runs) if k not in ("seed",)] or ["weight_decay", "lr"]
    rows = []
    for r in runs:
        bound, sharp = r.value("wd/stability_bound"), r.value("wd/lr_sharpness")
        margin = bound - sharp if bound is not None and sharp is not None else None
        rows.append([r.name, *(r.config.get(k) for k in keys), *(r.value(m) for m in WD_METRICS), margin])
    parts = [html_table(["run", *keys, *WD_METRICS, "stability margin (bound - lr*(beta+lambda))"], rows,
                        "weight decay: every AlexNet run")]
    layout = plot_series(runs, keys, "val/acc", "maximize") if len(runs) > 1 else None
    if layout is not None:
        parts.append(_png(layout[1], f"val/acc vs {layout[0]}", xlabel=layout[0], ylabel="val/acc", log_x=True))
    return "".join(parts)


def section_iou(runs: list[RunRecord]) -> str:
    run = runs[-1]
    return "".join([
        html_table(["metric", "value"], [[k, run.value(k)] for prefix in ("check/", "slide/", "eval/")
                                         for k in sorted(run.summary) if k.startswith(prefix)],
                   "IoU checks and results"),
        _logged_image(run, "iou/slide_plot"),
        table_html(run, "iou/kinks", "iou/kinks: measured one-sided derivatives beside the hand derivation (default "
                   "boxes)", lambda cols, rows: ([*cols, "theory left", "theory right"],
                                                 [[*r, *KINK_THEORY.get(float(r[0]), (None, None))] for r in rows])),
        line_series_plot(run, "iou/descent_table", "mean IoU with the target per step: 1 - IoU vs GIoU loss"),
        table_html(run, "iou/descent_boxes"),
    ])


def _epoch_curves(run: RunRecord) -> str:
    rows = [r for r in (h["item"] for h in of_type(run.log, "history")) if "val/acc" in r or "train/epoch_loss" in r]
    if not rows:
        return f'<p class="missing">no epoch metrics in {_esc(run.name)}.</p>'
    series = {key: [(r.get("epoch", i), r[key]) for i, r in enumerate(rows) if key in r]
              for key in ("train/epoch_acc", "val/acc", "train/epoch_loss", "val/loss")}
    return _png({k: pts for k, pts in series.items() if pts}, f"{run.name}: curves per epoch", xlabel="epoch")


def _confusion_grid(columns: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """wandb.plot.confusion_matrix's ``(actual, predicted, count)`` rows as a grid."""
    actual, predicted = list(dict.fromkeys(r[0] for r in rows)), list(dict.fromkeys(r[1] for r in rows))
    counts = {(r[0], r[1]): r[2] for r in rows}
    return ["actual \\ predicted", *predicted], [[a, *(counts.get((a, p), 0) for p in predicted)] for a in actual]


def section_alexnet(runs: list[RunRecord]) -> str:
    parts = []
    for run in runs[-3:]:  # the latest few: each reads the run's whole log
        parts.append(f"<h3>{_esc(run.name)} ({_esc(run.config.get('dataset', '?'))}, "
                     f"test/acc {_esc(fmt(run.value('test/acc')))})</h3>")
        parts += [_epoch_curves(run), _logged_image(run, "viz/conv1_filters"),
                  table_html(run, "test/confusion_matrix_table", "test confusion matrix", _confusion_grid)]
    return "".join(parts)


def section_detect(runs: list[RunRecord]) -> str:
    # `detect` leaves one run per option (the APs) and one for the photo (verdict and boxes).
    options = [r for r in runs if str(r.config.get("option")) in ("1", "2")]
    photo = [r for r in runs if r.table("detect/photo") is not None]
    ap = sorted({k for r in options for k in r.summary if k.endswith("AP") or "AP50" in k})
    parts = [html_table(["run", "option", "backbone", *ap],
                        [[r.name, r.config.get("option"),
                          r.config.get("backbone", "resnet50") if str(r.config.get("option")) == "2" else "resnet50",
                          *(r.value(k) for k in ap)] for r in options], "detection: COCO AP of each option")]
    if photo:
        parts += [table_html(photo[-1], "detect/verdict"), table_html(photo[-1], "detect/photo")]
    else:
        parts.append('<p class="missing">No photo comparison (detect/photo) among these runs.</p>')
    return "".join(parts)


# (the command of its runs, title, section, the command line that produces it)
SECTIONS: list[tuple[str, str, Callable[[list[RunRecord]], str], str]] = [
    ("filters", "Hand-designed 3x3 filters", section_filters, "python launch.py filters"),
    ("alexnet", "Weight decay: lambda, learning rate, shrink and stability", section_weight_decay,
     "python launch.py sweep sweeps/weight_decay.yaml"),
    ("iou", "IoU: the slide, the kinks and the descents", section_iou, "python launch.py iou"),
    ("alexnet", "AlexNet: curves, learned filters, confusion matrix", section_alexnet, "python launch.py alexnet"),
    ("detect", "Detection: option 1 vs option 2 on the photo", section_detect, "python launch.py detect"),
]

# Pictures that fail to decode are named at the top of the page and counted on <html data-broken-images>.
CHECK_IMAGES = """window.addEventListener("load",function(){var bad=0;
document.querySelectorAll("img").forEach(function(i){if(!i.complete||i.naturalWidth===0)bad++;});
document.documentElement.dataset.brokenImages=String(bad);
if(bad){var p=document.createElement("p");p.className="missing";p.textContent=bad+" picture(s) failed to load.";
document.body.prepend(p);}});"""

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top}caption{font-weight:bold;text-align:left;padding:4px 0}.missing{color:#a33}img{max-width:100%}"""


def build_page(runs: Sequence[RunRecord]) -> str:
    """The whole page; sections without runs say which command produces them."""
    by_command: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_command.setdefault(r.command, []).append(r)
    body = [f"<h1>Homework results from {len(runs)} W&amp;B run(s)</h1>",
            "<p>Every number and picture below is read from the runs' own files; the theory behind them is in "
            "docs/theory.md.</p>",
            html_table(["run", "command", "state", "folder"],
                       [[r.name, r.command, r.state, r.source] for r in runs], "runs")]
    for cmd, title, section, how in SECTIONS:
        body.append(f"<h2>{_esc(title)}</h2>")
        if cmd in by_command:
            body.append(section(by_command[cmd]))
        else:
            body.append(f'<p class="missing">Missing experiment: no <code>{_esc(cmd)}</code> run was given. '
                        f"Produce one with <code>{_esc(how)}</code>.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dlhw report</title>'
            f"<style>{STYLE}</style><script>{CHECK_IMAGES}</script></head><body>{''.join(body)}</body></html>")


def write_report(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Read the runs under ``paths`` (a UsageError names a path without any) and write the page to ``output``."""
    page = build_page(local_runs(paths))
    output = Path(output)
    with atomic_file(output) as fh:
        fh.write(page.encode("utf-8"))
    output.chmod(0o644)  # the temporary file was private; the page is meant to be shared
    return output
