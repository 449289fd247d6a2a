"""``launch.py dashboard``: the homework's W&B workspace views and Report, built with W&B's own
``wandb-workspaces`` (an optional extra: ``pip install -e ".[dashboard]"``).

One saved workspace view per experiment, its sections answering the homework's questions, and with
``--report`` a W&B Report: docs/theory.md's written answers beside the same panels. ``--dry-run``
saves nothing: it writes each spec as the library's own JSON model under ``--out/dashboard`` and
checks every key a panel names (metrics, tables, pictures, config keys, filters, grouping) against
the keys the experiment's local runs under ``--out`` logged, as ``wandb leet inspect`` reads them
back: a view that names a key no run logs would show an empty panel online, so it is an error here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dlhw.core.errors import UsageError, suggest
from dlhw.core.files import atomic_file
from dlhw.tracking.compare import find_run_dirs
from dlhw.tracking.mode import api_key_configured
from dlhw.tracking.readback import records, run_summary

THEORY = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
INSTALL = 'pip install -e ".[dashboard]" (or pip install "wandb-workspaces>=0.4.13")'
# (view name, commands whose runs it shows, W&B job types, docs/theory.md heading it answers).
# `launch.py sweep` files its trials under the job type "sweep-trial"; `wandb agent` keeps the command's.
EXPERIMENTS = [
    ("filters", ("filters",), ("filters",), "filters"),
    ("weight decay", ("alexnet",), ("alexnet", "sweep-trial"), "weight decay"),
    ("IoU", ("iou",), ("iou",), "iou"),
    ("AlexNet", ("alexnet",), ("alexnet", "sweep-trial"), None),
    ("detection", ("detect",), ("detect-option1", "detect-option2", "detect-photo"), None),
]
DIRECTIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")
SHARPENERS = ("sharpen_horizontal", "sharpen_vertical", "sharpen_diagonal")
# What wandb.plot.line_series and wandb.plot.confusion_matrix draw their tables with.
LINE_SERIES = ("wandb/lineseries/v0", {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"})
CONFUSION = ("wandb/confusion_matrix/v1", {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"})


def _library() -> tuple[Any, Any]:
    """``wandb_workspaces.reports.v2`` and ``.workspaces``, or a UsageError saying how to install them."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise UsageError(f"dashboard needs the wandb-workspaces package: {INSTALL}") from None
    return wr, ws


def sections(wr: Any, view: str) -> list[tuple[str, list[Any]]]:
    """The view's ``(section title, panels)``, each panel naming keys the experiment logs."""
    wide, tall = wr.Layout(w=24, h=10), wr.Layout(w=12, h=8)

    def table(key: str, layout: Any = wide) -> Any:
        return wr.WeavePanelSummaryTable(table_name=key, layout=layout)

    def chart(key: str, kind: tuple[str, dict], title: str) -> Any:
        panel = wr.CustomChart.from_table(key, kind[1], {"title": title})
        panel.chart_name = kind[0]
        return panel

    def lines(*keys: str, x: str = "trainer/step", title: str | None = None) -> Any:
        return wr.LinePlot(x=x, y=list(keys), title=title)

    if view == "filters":
        return [("What each kernel does to the photos", [table("filters/outputs")]),
                ("Gain checks on gratings (> 1 sharpened, < 1 smoothed)", [
                    table("filters/checks"),
                    wr.BarPlot(title="sharpeners: gain along each direction",
                               metrics=[f"check/gain/{f}/{d}" for f in SHARPENERS for d in DIRECTIONS]),
                    wr.BarPlot(title="high-frequency energy after / before",
                               metrics=[f"check/hf_ratio/{f}" for f in ("box_blur", "gaussian_blur", *SHARPENERS)]),
                    wr.ScalarChart(title="all checks passed", metric="check/passed")])]
    if view == "weight decay":
        return [("Sweep trials: lambda x learning rate against val/acc", [
                    wr.ParallelCoordinatesPlot(columns=[wr.ParallelCoordinatesPlotColumn(metric=m) for m in (
                        wr.Config("weight_decay"), wr.Config("lr"), wr.SummaryMetric("val/acc"))]),
                    wr.ParameterImportancePlot(with_respect_to="val/acc"),
                    wr.ScatterPlot(x=wr.Config("weight_decay"), y=wr.SummaryMetric("val/acc"), z=wr.Config("lr"))]),
                ("Measured shrink beside 1 - lr*lambda", [
                    lines("wd/decay_factor", "wd/decay_factor_theory", title="decay factor: measured vs theory"),
                    lines("wd/weight_norm")]),
                ("Stability: lr*(beta + lambda) against its bound", [
                    lines("wd/lr_sharpness", "wd/stability_bound", title="lr sharpness vs stability bound"),
                    wr.ScatterPlot(x=wr.Config("lr"), y=wr.SummaryMetric("wd/lr_sharpness")),
                    lines("wd/hessian_top_eig")])]
    if view == "IoU":
        return [("The slide: IoU has no gradient while the boxes are apart; GIoU does", [
                    chart("iou/slide_values_table", LINE_SERIES, "IoU, GIoU, DIoU along the slide"),
                    chart("iou/slide_grads_table", LINE_SERIES, "d/dx along the slide"),
                    wr.MediaBrowser(title="both panels, kinks dotted", media_keys=["iou/slide_plot"], layout=tall),
                    table("iou/kinks"), table("iou/slide")]),
                ("Descents from disjoint starts: 1 - IoU loss is stuck, GIoU loss trains", [
                    lines("descent/iou_loss/iou", "descent/giou_loss/iou", title="mean IoU with the target"),
                    lines("descent/iou_loss/grad_norm", "descent/giou_loss/grad_norm", title="gradient norm"),
                    chart("iou/descent_table", LINE_SERIES, "mean IoU per step"),
                    table("iou/descent_boxes")]),
                ("Checks", [wr.BarPlot(title="share of the slide with zero gradient", metrics=[
                                f"slide/{m}_zero_grad_fraction" for m in ("iou", "giou", "diou")]),
                            wr.ScalarChart(metric="check/max_abs_diff_vs_torchvision"),
                            wr.ScalarChart(metric="check/passed")])]
    if view == "AlexNet":
        return [("Curves", [lines("train/epoch_acc", "val/acc", x="epoch", title="accuracy per epoch"),
                            lines("train/epoch_loss", "val/loss", x="epoch", title="loss per epoch"),
                            lines("train/loss"), wr.ScalarChart(metric="test/acc")]),
                ("Learned filters and feature maps", [
                    wr.MediaBrowser(title="conv1 filters per epoch", media_keys=["viz/conv1_filters"],
                                    gallery_axis="step", layout=tall),
                    table("viz/feature_maps")]),
                ("Confusion matrix (test set)", [chart("test/confusion_matrix_table", CONFUSION, "test confusion matrix")])]
    if view == "detection":
        return [("Option 1 against option 2, grouped by the detect command", [
                    wr.BarPlot(title="AP on the training images", metrics=["train/bbox_AP"]),
                    wr.BarPlot(title="held-out AP", metrics=["val/bbox_AP", "val/segm_AP"]),
                    lines("val/bbox_AP", "val/segm_AP", x="epoch", title="held-out AP per epoch"),
                    lines("train/loss"), wr.BarPlot(metrics=["train/sec_per_iter"])]),
                ("Predictions on held-out images (ground truth and predicted boxes)", [table("detect/predictions")]),
                ("Both models on the photo, and the verdict", [table("detect/photo"), table("detect/verdict")])]
    raise ValueError(view)


def _filter(job_types: Sequence[str], group: str | None = None, sweep: str | None = None) -> str:
    picked = [f"Metric('JobType') in {list(job_types)!r}"]
    picked += [f"Metric('Group') == {group!r}"] if group else []
    picked += [f"Metric('Sweep') == {sweep!r}"] if sweep else []
    return " and ".join(picked)


def theory_sections(path: Path = THEORY) -> tuple[str, dict[str, str]]:
    """docs/theory.md as its introduction and ``{heading: text}`` of its ``##`` sections."""
    if not path.is_file():
        raise UsageError(f"{path} not found: the Report quotes it; run from a checkout of the suite")
    intro, *parts = path.read_text().split("\n## ")
    return intro, {p.split("\n", 1)[0]: "## " + p for p in parts}


def build(*, project: str, entity: str, report: bool, group: str | None = None, sweep: str | None = None,
          online: bool = False) -> dict[str, Any]:
    """``{file stem: workspace or report object}``: one view per experiment, and the Report with ``report``."""
    wr, ws = _library()
    built: dict[str, Any] = {}
    for name, _, job_types, _ in EXPERIMENTS:
        built[f"view-{name.replace(' ', '-')}"] = ws.Workspace(
            entity=entity, project=project, name=f"dlhw: {name}",
            sections=[ws.Section(name=title, panels=panels, is_open=True) for title, panels in sections(wr, name)],
            runset_settings=ws.RunsetSettings(filters=_filter(job_types), groupby=(
                [ws.Metric("Group"), ws.Config("option")] if name == "detection" else [])))
    if report:
        intro, answers = theory_sections()
        blocks: list[Any] = [wr.MarkdownBlock(text=intro.split("\n", 1)[-1].strip())]
        for name, _, job_types, heading in EXPERIMENTS:
            text = next((t for h, t in answers.items() if heading and heading in h.lower()), f"## {name}")
            # Runsets look their project up on the server when they name one: only when saving.
            where = {"entity": entity, "project": project} if online else {}
            blocks += [wr.MarkdownBlock(text=text),
                       wr.PanelGrid(runsets=[wr.Runset(name=name, filters=_filter(job_types, group, sweep), **where)],
                                    panels=[p for _, panels in sections(wr, name) for p in panels])]
        built["report"] = wr.Report(project=project, entity=entity, title="Deep-learning homework: the answers",
                                    description="docs/theory.md's written answers beside the runs that check them.",
                                    blocks=blocks, width="fluid")
    return built


def spec(obj: Any) -> dict[str, Any]:
    """The object as the library's own pydantic model, dumped to JSON-ready data."""
    return obj._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def _views(data: dict[str, Any]) -> Iterator[tuple[str, Any, list[Any]]]:
    """``(experiment, runset or run settings, panels)`` of a view's or Report's spec, rebuilt by the library."""
    wr, ws = _library()
    if not isinstance(data.get("spec"), dict):
        raise UsageError("a spec without its 'spec' field: pass a JSON file that `launch.py dashboard --dry-run` wrote")
    if "blocks" in data["spec"]:
        for block in wr.Report._from_model(wr.internal.ReportViewspec.model_validate(data)).blocks:
            if isinstance(block, wr.PanelGrid):
                yield block.runsets[0].name, block.runsets[0], block.panels
    else:
        view = ws.Workspace._from_model(ws.internal.View.model_validate(data))
        yield view.name.removeprefix("dlhw: "), view.runset_settings, [p for s in view.sections for p in s.panels]


def panel_keys(wr: Any, panel: Any) -> Iterator[tuple[str, str]]:
    """``(kind, key)`` for every key a panel names: kind "config" or "metric" (history, summary, media)."""
    from wandb_workspaces.expr import FE_METRIC_NAME_MAP

    values: list[Any] = []
    for field in ("x", "y", "z", "metric", "metrics", "media_keys", "table_name", "groupby", "with_respect_to"):
        v = getattr(panel, field, None)
        values += v if isinstance(v, list) else [v]
    values += [c.metric for c in getattr(panel, "columns", [])]
    values.append((getattr(panel, "query", None) or {}).get("summaryTable", {}).get("tableKey"))
    for v in values:
        if isinstance(v, wr.Config):
            yield "config", v.name
        elif v and (name := getattr(v, "name", v)) not in FE_METRIC_NAME_MAP:  # run attributes: Step, Group, ...
            yield "metric", name


def _runset_keys(settings: Any) -> Iterator[tuple[str, str]]:
    from wandb_workspaces.expr import expr_to_filters

    def walk(node: Any) -> Iterator[tuple[str, str]]:
        if node.key is not None and node.key.section in ("config", "summary"):
            yield ("config" if node.key.section == "config" else "metric"), node.key.name
        for child in node.filters or []:
            yield from walk(child)

    yield from walk(expr_to_filters(settings.filters or ""))
    for g in settings.groupby:
        name = getattr(g, "name", g)
        if type(g).__name__ == "Config" or name.startswith("config."):
            yield "config", name.removeprefix("config.")


def _run_keys(run_dir: Path) -> tuple[str, set[str], set[str]]:
    """``(command, config keys, summary keys)`` of one local run, the command read from its job type
    (``detect-option1``: detect); the summary holds every key the run logged."""
    info = run_summary(run_dir)
    found = [r for r in records(run_dir) if r.get("type") in ("run", "environment")]
    command = next((r["run"].get("job_type") or "" for r in found if r["type"] == "run"), "").split("-")[0]
    if command == "sweep":  # `launch.py sweep` files a trial as "sweep-trial": its command is on its command line
        args = next((r["environment"]["args"] for r in found if "args" in r["environment"]), [])
        command = next((a for a in args if any(a in cmds for _, cmds, _, _ in EXPERIMENTS)), "?")
    return command, set(info.get("config") or {}), set(info.get("summary") or {})


def logged_keys(out: str | Path) -> dict[str, tuple[set[str], set[str]]]:
    """``{command: (config keys, metric keys)}`` over every local run under ``out``."""
    with ThreadPoolExecutor(max_workers=4) as pool:  # each read is a `wandb leet inspect` subprocess
        runs = list(pool.map(_run_keys, find_run_dirs([out])))
    found: dict[str, tuple[set[str], set[str]]] = {}
    for command, config, metrics in runs:
        have = found.setdefault(command, (set(), set()))
        have[0].update(config)
        have[1].update(metrics)
    return found


def check(specs: dict[str, dict[str, Any]], logged: dict[str, tuple[set[str], set[str]]], out: str | Path) -> int:
    """Raise a one-line UsageError naming every panel key no run of its experiment logged; return the keys checked."""
    wr, _ = _library()
    commands = {name: cmds for name, cmds, _, _ in EXPERIMENTS}
    problems, checked = [], 0
    for file, data in specs.items():
        for name, settings, panels in _views(data):
            cmds = commands.get(name)
            if cmds is None:
                raise UsageError(f"{file}: '{name}' is not one of the views: {', '.join(commands)}")
            have = [logged[c] for c in cmds if c in logged]
            if not have:
                raise UsageError(f"no local {'/'.join(cmds)} run under {out} to check the {name} view against; "
                                 f"run `python launch.py {cmds[0]} --out {out}` first")
            known = {"config": set().union(*(c for c, _ in have)), "metric": set().union(*(m for _, m in have))}
            keys = [k for p in panels for k in panel_keys(wr, p)] + list(_runset_keys(settings))
            checked += len(keys)
            problems += [f"{file} ({name}) names {kind} key '{key}' that no {'/'.join(cmds)} run under {out} "
                         f"logged{suggest(key, known[kind])}" for kind, key in dict.fromkeys(keys) if key not in known[kind]]
    if problems:
        raise UsageError("; ".join(problems))
    return checked


def run_dashboard(*, project: str | None, entity: str | None, out: str, dry_run: bool, report: bool,
                  group: str | None = None, sweep: str | None = None, specs: Sequence[str] = ()) -> int:
    """The ``dashboard`` command: save the views (and the Report), or with ``dry_run`` write and check their specs."""
    _library()
    project = project or os.environ.get("WANDB_PROJECT") or "dlhw"
    entity = entity or os.environ.get("WANDB_ENTITY")
    if not (dry_run or specs):
        if not api_key_configured():
            raise UsageError("dashboard saves to W&B and needs an API key: run `wandb login` (or set WANDB_API_KEY), "
                             "or check the views offline with --dry-run")
        import wandb

        entity = entity or wandb.Api().default_entity
        for obj in build(project=project, entity=entity, report=report, group=group, sweep=sweep, online=True).values():
            obj.save()
        return 0
    if specs:
        files = {}
        for path in map(Path, specs):
            try:
                files[path.name] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the spec {path} ({exc.__class__.__name__}); pass a JSON file that "
                                 "`launch.py dashboard --dry-run` wrote") from None
    else:
        folder = Path(out) / "dashboard"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for stem, obj in build(project=project, entity=entity or "", report=report, group=group, sweep=sweep).items():
            with atomic_file(folder / f"{stem}.json") as fh:
                fh.write(json.dumps(spec(obj), indent=1).encode())
            (folder / f"{stem}.json").chmod(0o644)  # the temporary file was private; a spec is meant to be read
            # Checked as written: the JSON read back through the library, as a save would send it.
            files[f"{stem}.json"] = json.loads((folder / f"{stem}.json").read_text())
        print(f"dashboard: {len(files)} spec(s) written under {folder}")
    n = check(files, logged_keys(out), out)
    print(f"dashboard: {n} panel keys in {len(files)} spec(s), each logged by a local run under {out}")
    return 0
