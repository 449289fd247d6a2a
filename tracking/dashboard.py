"""``launch.py dashboard``: W&B workspace views and a Report, built with ``wandb-workspaces`` (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wandb

from dlhw.core.errors import UsageError, suggest
from dlhw.core.files import atomic_file
from dlhw.tracking.cli import api_key_configured
from dlhw.tracking.readback import local_runs

try:  # the dashboard extra; without it, run_dashboard says how to install it
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.expr import FE_METRIC_NAME_MAP, expr_to_filters
except ImportError:
    wr = ws = None

THEORY = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
INSTALL = 'pip install -e ".[dashboard]" (or pip install "wandb-workspaces>=0.4.13")'
# (view name, also the docs/theory.md heading it quotes if any; the command whose runs it shows; their W&B job types)
EXPERIMENTS = [("filters", "filters", ("filters",)), ("weight decay", "alexnet", ("alexnet",)),
               ("IoU", "iou", ("iou",)), ("AlexNet", "alexnet", ("alexnet",)),
               ("detection", "detect", ("detect-option1", "detect-option2", "detect-photo"))]
# What wandb.plot.line_series and wandb.plot.confusion_matrix draw their tables with, and the tables' columns.
LINE_SERIES = ("wandb/lineseries/v0", "step", "lineKey", "lineVal")
CONFUSION = ("wandb/confusion_matrix/v1", "Actual", "Predicted", "nPredictions")


def sections(view: str) -> list[tuple[str, list[Any]]]:
    """The view's ``(section title, panels)``, each panel naming keys the experiment logs."""
    def table(key: str) -> Any:
        return wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(w=24, h=10))

    def chart(key: str, kind: tuple[str, ...], title: str) -> Any:
        panel = wr.CustomChart.from_table(key, {column: column for column in kind[1:]}, {"title": title})
        panel.chart_name = kind[0]
        return panel

    def lines(*keys: str, x: str = "trainer/step", title: str | None = None) -> Any:
        return wr.LinePlot(x=x, y=list(keys), title=title)

    def bars(title: str, *keys: str) -> Any:
        return wr.BarPlot(title=title, metrics=list(keys))

    def pictures(title: str, key: str) -> Any:
        return wr.MediaBrowser(title=title, media_keys=[key], gallery_axis="step", layout=wr.Layout(w=12, h=8))

    config, summary, d4 = wr.Config, wr.SummaryMetric, ("horizontal", "vertical", "diagonal", "antidiagonal")
    return {
        "filters": [
            ("What each kernel does to the photos", [table("filters/outputs")]),
            ("Gain checks on gratings (> 1 sharpened, < 1 smoothed)", [
                table("filters/checks"), bars("sharpeners: gain along each direction",
                                              *(f"check/gain/sharpen_{f}/{d}" for f in d4[:3] for d in d4)),
                bars("high-frequency energy after / before",
                     *(f"check/hf_ratio/{f}" for f in ("box_blur", "gaussian_blur", "sharpen_diagonal"))),
                wr.ScalarChart(title="all checks passed", metric="check/passed")])],
        "weight decay": [
            ("Sweep trials: lambda x learning rate against val/acc", [
                wr.ParallelCoordinatesPlot(columns=[wr.ParallelCoordinatesPlotColumn(metric=m) for m in (
                    config("weight_decay"), config("lr"), summary("val/acc"))]),
                wr.ParameterImportancePlot(with_respect_to="val/acc"),
                wr.ScatterPlot(x=config("weight_decay"), y=summary("val/acc"), z=config("lr"))]),
            ("Measured shrink beside 1 - lr*lambda", [
                lines("wd/decay_factor", "wd/decay_factor_theory", title="decay factor: measured vs theory"),
                lines("wd/weight_norm")]),
            ("Stability: lr*(beta + lambda) against its bound", [
                lines("wd/lr_sharpness", "wd/stability_bound", title="lr sharpness vs stability bound"),
                wr.ScatterPlot(x=config("lr"), y=summary("wd/lr_sharpness")), lines("wd/hessian_top_eig")])],
        "IoU": [
            ("The slide: IoU has no gradient while the boxes are apart; GIoU does", [
                chart("iou/slide_values_table", LINE_SERIES, "IoU, GIoU, DIoU along the slide"),
                chart("iou/slide_grads_table", LINE_SERIES, "d/dx along the slide"),
                pictures("both panels, kinks dotted", "iou/slide_plot"), table("iou/kinks"), table("iou/slide")]),
            ("Descents from disjoint starts: 1 - IoU loss is stuck, GIoU loss trains", [
                lines("descent/iou_loss/iou", "descent/giou_loss/iou", title="mean IoU with the target"),
                lines("descent/iou_loss/grad_norm", "descent/giou_loss/grad_norm", title="gradient norm"),
                chart("iou/descent_table", LINE_SERIES, "mean IoU per step"), table("iou/descent_boxes")]),
            ("Checks", [bars("share of the slide with zero gradient",
                             *(f"slide/{m}_zero_grad_fraction" for m in ("iou", "giou", "diou"))),
                        wr.ScalarChart(metric="check/max_abs_diff_vs_torchvision"),
                        wr.ScalarChart(metric="check/passed")])],
        "AlexNet": [
            ("Curves", [lines("train/epoch_acc", "val/acc", x="epoch", title="accuracy per epoch"),
                        lines("train/epoch_loss", "val/loss", x="epoch", title="loss per epoch"),
                        lines("train/loss"), wr.ScalarChart(metric="test/acc")]),
            ("Learned filters and feature maps", [pictures("conv1 filters per epoch", "viz/conv1_filters"),
                                                  table("viz/feature_maps")]),
            ("Confusion matrix (test set)", [
                chart("test/confusion_matrix_table", CONFUSION, "test confusion matrix")])],
        "detection": [
            ("Option 1 against option 2, grouped by the detect command", [
                bars("AP on the training images", "train/bbox_AP"), bars("held-out AP", "val/bbox_AP", "val/segm_AP"),
                lines("val/bbox_AP", "val/segm_AP", x="epoch", title="held-out AP per epoch"),
                lines("train/loss"), bars("seconds per training iteration", "train/sec_per_iter")]),
            ("Predictions on held-out images (ground truth and predicted boxes)", [table("detect/predictions")]),
            ("Both models on the photo, and the verdict", [
                table("detect/photo"), table("detect/verdict"),
                bars("people found on the photo (score >= 0.5)", *(f"photo/option{o}/people@0.5" for o in (1, 2)))])],
    }[view]


def _filter(job_types: Sequence[str], group: str | None = None, sweep: str | None = None) -> str:
    return " and ".join([f"Metric('JobType') in {list(job_types)!r}",
                         *(f"Metric('{k}') == {v!r}" for k, v in (("Group", group), ("Sweep", sweep)) if v)])


def build(*, project: str, entity: str, report: bool, group: str | None = None, sweep: str | None = None,
          online: bool = False) -> dict[str, Any]:
    """``{file stem: workspace or report object}``: one view per experiment, and the Report with ``report``."""
    built: dict[str, Any] = {}
    for name, _, job_types in EXPERIMENTS:
        grouped = name == "detection"  # by the detect command that made them, then by option
        built[f"view-{name.replace(' ', '-')}"] = ws.Workspace(
            entity=entity, project=project, name=f"dlhw: {name}",
            sections=[ws.Section(name=title, panels=panels, is_open=True) for title, panels in sections(name)],
            runset_settings=ws.RunsetSettings(filters=_filter(job_types),
                                              groupby=[ws.Metric("Group"), ws.Config("option")] if grouped else []))
    if report:
        intro, *answers = THEORY.read_text().split("\n## ")
        blocks: list[Any] = [wr.MarkdownBlock(text=intro.split("\n", 1)[-1].strip())]
        # Runsets look their project up on the server when they name one: only when saving.
        where = {"entity": entity, "project": project} if online else {}
        for name, _, job_types in EXPERIMENTS:
            text = next((f"## {a}" for a in answers if name.lower() in a.split("\n", 1)[0].lower()), f"## {name}")
            runs = wr.Runset(name=name, filters=_filter(job_types, group, sweep), **where,
                             groupby=["group", "config.option"] if name == "detection" else [])
            blocks += [wr.MarkdownBlock(text=text),
                       wr.PanelGrid(runsets=[runs], panels=[p for _, panels in sections(name) for p in panels])]
        built["report"] = wr.Report(project=project, entity=entity, title="Deep-learning homework: the answers",
                                    description="docs/theory.md's written answers beside the runs that check them.",
                                    blocks=blocks, width="fluid")
    return built


def _views(path: Path) -> list[tuple[str, Any, list[Any]]]:
    """``(experiment, run set, panels)`` of a view's or Report's spec file, rebuilt by the library."""
    try:
        data = json.loads(path.read_text())
        if "blocks" in data["spec"]:
            report = wr.Report._from_model(wr.internal.ReportViewspec.model_validate(data))
            return [(b.runsets[0].name, b.runsets[0], b.panels) for b in report.blocks if isinstance(b, wr.PanelGrid)]
        view = ws.Workspace._from_model(ws.internal.View.model_validate(data))
    except (OSError, TypeError, KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(f"{path} is not a W&B view or Report spec ({exc.__class__.__name__}); pass a JSON file that "
                         "`launch.py dashboard --dry-run` wrote") from None
    return [(view.name.removeprefix("dlhw: "), view.runset_settings, [p for s in view.sections for p in s.panels])]


def keys_named(panels: Sequence[Any], runs: Any) -> list[tuple[str, str]]:
    """``("config" or "metric", key)`` for every key the panels and the run set's filters and grouping name."""
    values: list[Any] = list(runs.groupby)  # a view's: Config("option"); a Report's run set's: "config.option"
    for panel in panels:
        for field in ("x", "y", "z", "metric", "metrics", "media_keys", "table_name", "groupby", "with_respect_to"):
            v = getattr(panel, field, None)
            values += v if isinstance(v, list) else [v]
        values += [c.metric for c in getattr(panel, "columns", [])]
        values.append((getattr(panel, "query", None) or {}).get("summaryTable", {}).get("tableKey"))
    found = []
    for v in values:
        name = getattr(v, "name", v)
        if type(v).__name__ == "Config" or str(name).startswith("config."):  # a Report's reads back "config.K.value"
            found.append(("config", name.removeprefix("config.").removesuffix(".value")))
        elif v and name not in FE_METRIC_NAME_MAP and not str(name).startswith("run."):  # run attributes: Step, Group
            found.append(("metric", name))
    todo = [expr_to_filters(runs.filters or "")]
    while todo:
        node = todo.pop()
        todo += node.filters or []
        if node.key is not None and node.key.section in ("config", "summary"):
            found.append(("config" if node.key.section == "config" else "metric", node.key.name))
    return found


def logged_keys(out: str | Path) -> dict[str, tuple[set[str], set[str]]]:
    """``{command: (config keys, metric keys)}`` of the local runs under ``out`` (their summaries hold every key)."""
    runs = local_runs([out])
    with ThreadPoolExecutor(max_workers=4) as pool:  # each log is a `wandb leet inspect` subprocess
        commands = list(pool.map(lambda run: run.command, runs))
    found: dict[str, tuple[set[str], set[str]]] = {}
    for command, run in zip(commands, runs):
        have = found.setdefault(command, (set(), set()))
        have[0].update(run.config)
        have[1].update(run.raw)
    return found


def check(specs: Sequence[Path], logged: dict[str, tuple[set[str], set[str]]], out: str | Path) -> int:
    """How many keys the spec files name; a UsageError naming every one that no run of its experiment logged."""
    commands = {e[0]: e[1] for e in EXPERIMENTS}
    problems, checked = [], 0
    for path in specs:
        for name, runs, panels in _views(path):
            command = commands.get(name)
            if command not in logged:  # an unknown view, or an experiment without a local run
                raise UsageError(f"{path.name}: no local run under {out} to check the view '{name}' against; make one "
                                 f"with `python launch.py {command or 'COMMAND'} --out {out}`")
            known = dict(zip(("config", "metric"), logged[command]))
            keys = keys_named(panels, runs)
            checked += len(keys)
            problems += [f"{path.name} ({name}) names {kind} key '{key}' that no {command} run under {out} logged"
                         f"{suggest(key, known[kind])}" for kind, key in dict.fromkeys(keys) if key not in known[kind]]
    if problems:
        raise UsageError("; ".join(problems))
    return checked


def run_dashboard(args: argparse.Namespace) -> int:
    """``launch.py dashboard``: save the views (and the Report), or with ``--dry-run`` write and check their specs."""
    out, report, group, sweep, specs = args.out, args.report, args.group, args.sweep, args.check
    if wr is None:
        raise UsageError(f"dashboard needs the wandb-workspaces package: {INSTALL}")
    if report and not THEORY.is_file():
        raise UsageError(f"{THEORY} not found: the Report quotes it; run from a checkout of the suite")
    project = args.project or os.environ.get("WANDB_PROJECT") or "dlhw"
    entity = args.entity or os.environ.get("WANDB_ENTITY")
    if not (args.dry_run or specs):
        if not api_key_configured():
            raise UsageError("dashboard saves to W&B and needs an API key: run `wandb login` (or set WANDB_API_KEY), "
                             "or check the views offline with --dry-run")
        try:
            built = build(project=project, entity=entity or wandb.Api().default_entity, report=report, group=group,
                          sweep=sweep, online=True)
            for obj in built.values():
                obj.save()
        except Exception as exc:  # the server's or the network's answer, whatever its type: one line
            raise UsageError(f"saving to W&B failed ({exc.__class__.__name__}: {str(exc)[:200]}); check the network, "
                             "`wandb login` and --entity/--project") from None
        return 0
    files = [Path(s) for s in specs]  # checked as files: what was written, read back through the library
    if not files:
        folder = Path(out) / "dashboard"
        for stem, obj in build(project=project, entity=entity or "", report=report, group=group, sweep=sweep).items():
            path = folder / f"{stem}.json"
            with atomic_file(path) as fh:  # the library's own model, as a save would send it
                fh.write(obj._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1).encode())
            path.chmod(0o644)  # the temporary file was private; a spec is meant to be read
            files.append(path)
        print(f"dashboard: {len(files)} spec(s) written under {folder}")
    n = check(files, logged_keys(out), out)
    print(f"dashboard: {n} panel keys in {len(files)} spec(s), each logged by a local run under {out}")
    return 0
