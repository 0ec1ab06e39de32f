"""Reports from stored results: the end-of-run summary of `mtlprune run`, and `mtlprune report`'s full report.

`mtlprune report` works from the store alone and never imports torch (nor the method plugins, which do):
given a config it reads only the YAML ``name`` key and then the matrix's manifest
(``<store>/<name>/matrix.json``, see :mod:`mtlprune.store.manifest`), so cells that were planned but never
started are listed as missing; given a store folder it reports every run in it (and the cells that any
manifest in it lists without a run). Output, under ``--out`` (default ``<store>/<name>/report`` or
``<store>/report``):

- ``figures/*.pdf|png``: metrics and ΔT/Δm vs sparsity, per-component allocation, training curves, mask
  analytics where masks are stored;
- ``tables/*.md|tex``: the comparison of all cells and AdapMTL's Table 2 layout per setting and target;
- statistics over seeds (:mod:`mtlprune.analysis.stats`): ΔT intervals, average ranks with the Friedman test
  and a critical-difference diagram, Holm-adjusted pairwise tests; with one seed per cell, only the
  statement that no significance statement is possible;
- ``report.html``: one self-contained page with all of it, the failed and missing cells with their errors,
  the matrix spec and the provenance of the runs.

A figure or table that cannot be drawn (no finished cell of a setting, no masks) is skipped with the
reason written into the page; failed, running and missing cells are never dropped silently.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from mtlprune.analysis import load_results, summary_table
from mtlprune.analysis.load import BASE_COLUMNS
from mtlprune.spec.select import Selection
from mtlprune.store import DEFAULT_STORE, Store, atomic_write_bytes
from mtlprune.store.manifest import MANIFEST, Manifest, read_manifest

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from mtlprune.analysis.html import Figure as HtmlFigure
    from mtlprune.analysis.html import Section
    from mtlprune.spec import MatrixSpec

__all__ = ["ReportOutcome", "build_report", "collect", "matrix_name", "resolve_source", "write_run_report"]

REPORT_HTML = "report.html"
MISSING = "missing"
# How many single-run figures (curves, mask heatmaps) one report draws at most: they illustrate, the
# comparison figures carry the results, and a 500-cell report must stay fast.
MAX_RUN_FIGURES = 4
SKIPPABLE = (ValueError, KeyError, FileNotFoundError)
LEFT = ' class="l"'

SHORT_HEADERS = {
    "target_sparsity": "target",
    "achieved_sparsity": "achieved",
    "segment_semantic.miou": "seg mIoU ↑",
    "normal.mean": "normal mean° ↓",
    "depth_zbuffer.abs_err": "depth abs ↓",
    "keypoints2d.err": "keypoints err ↓",
    "edge_texture.err": "edges err ↓",
    "delta_t": "ΔT ↑",
    "delta_m": "Δm ↑",
    "delta_t_control": "ΔT vs control ↑",
}


# ------------------------------------------------------------------------------ end-of-run summary


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def write_run_report(matrix: MatrixSpec, store: Store, console: Console) -> Path:
    """``<store>/<matrix name>/results.parquet`` + ΔT figure (PNG, PDF) + the printed summary."""
    from rich.table import Table

    from mtlprune.analysis.figures import delta_t_vs_sparsity

    out = store.root / matrix.name
    run_ids = [cell.run_id for cell in matrix.expand()]
    frame = load_results(store.root, run_ids)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(out / "results.parquet", buffer.getvalue())
    table = summary_table(frame)
    if table.empty:
        console.print("no finished cell to summarise")
        return out
    printed = Table(title=f"{matrix.name}: mean over seeds (ΔT, Δm in %, positive = better than dense)")
    for column in table.columns:
        justify = "left" if table[column].dtype == object else "right"
        printed.add_column(SHORT_HEADERS.get(str(column), str(column)), justify=justify)
    for _, row in table.iterrows():
        printed.add_row(*(_fmt(v) for v in row))
    console.print(printed)
    for line in collapse_lines(frame):
        console.print(f"warning: {line}")
    if "delta_t" not in frame or frame["delta_t"].notna().sum() == 0:
        notes = sorted(set(frame.get("delta_note", frame.iloc[0:0]).dropna()))
        why = f" ({notes[0]})" if notes else ""
        console.print(f"results: {out / 'results.parquet'}; no ΔT figure: no cell has a ΔT{why}")
        return out
    figures = delta_t_vs_sparsity(frame, out / "delta_t_vs_sparsity")
    console.print(f"results: {out / 'results.parquet'}; figures: {', '.join(str(p) for p in figures)}")
    return out


# ------------------------------------------------------------------------------------- collecting


def matrix_name(config: Path) -> str:
    """The ``name`` of a matrix config, read with yaml.safe_load and nothing else (no validation)."""
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{config}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(
            f"{config}: not a text file (expected a matrix YAML or a result store folder)"
        ) from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config}: expected a mapping with a 'name' key (the matrix name), got {name!r}")
    return name


def resolve_source(
    source: str | Path, store: str | Path | None = None
) -> tuple[Path, list[Manifest], str | None]:
    """(store root, manifests, matrix name or None) for a config file or a store folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file or result store")
    if path.is_dir():
        if store is not None and Path(store).resolve() != path.resolve():
            raise ValueError(f"{path} is a result store, and --store names another one ({store}); give one")
        if not (path / "runs").is_dir():
            raise FileNotFoundError(f"{path}: not a result store (no runs/ folder in it)")
        manifests = [read_manifest(path, p.parent.name) for p in sorted(path.glob(f"*/{MANIFEST}"))]
        return path, manifests, None
    name = matrix_name(path)
    root = DEFAULT_STORE if store is None else Path(store)
    if not root.is_dir():
        raise FileNotFoundError(f"result store {root} does not exist (config {path}, matrix {name!r})")
    return root, [read_manifest(root, name)], name


def _missing_rows(manifests: Iterable[Manifest], present: set[str]) -> list[dict[str, Any]]:
    """load_results-shaped rows for the planned cells that have no run folder (never started)."""
    rows, seen = [], set(present)
    for manifest in manifests:
        for cell in manifest.cells:
            if cell.run_id in seen:
                continue
            seen.add(cell.run_id)
            rows.append(
                {
                    "run_id": cell.run_id,
                    "dataset": cell.dataset,
                    "tasks": ",".join(cell.tasks),
                    "arch": cell.arch,
                    "width": cell.width,
                    "head_width": cell.head_width,
                    "method": cell.method,
                    "method_name": cell.method_name,
                    "target_sparsity": float(cell.target),
                    "seed": cell.seed,
                    "protocol": cell.protocol,
                    "status": MISSING,
                    "error": f"planned in {manifest.name}, never started (no run folder)",
                    "dense_run_id": cell.dense_run_id,
                }
            )
    return rows


@dataclass
class ReportData:
    """Everything a report shows, read from the store once."""

    title: str
    store: Path
    frame: pd.DataFrame
    dense: pd.DataFrame
    manifests: list[Manifest]
    published: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)


def collect(
    root: Path, manifests: list[Manifest], name: str | None, only: Selection | None = None
) -> ReportData:
    """Cells (with missing ones added), dense stages and published numbers for a report; ``only`` keeps
    the selected cells (and their dense stages)."""
    from mtlprune.analysis import load_published
    from mtlprune.analysis.dense import load_dense

    notes: list[str] = []
    frame = load_results(root, manifests[0].cell_ids) if name is not None else load_results(root)
    missing = _missing_rows(manifests, set(frame["run_id"]))
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
        frame = frame[[*BASE_COLUMNS, *(c for c in frame.columns if c not in BASE_COLUMNS)]]
    if frame.empty:
        raise ValueError(
            f"{root}: no cell to report (no run with a spec.json, nothing planned in a manifest)"
        )
    planned_dense = {d.run_id for m in manifests for d in m.dense}
    if only:
        frame = frame[[only.matches_record(row) for row in frame.to_dict("records")]].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"--only {only.describe()} selects no cell of {name or root}")
        planned_dense = set()  # only the selected cells' dense stages
    dense_ids = set(frame["dense_run_id"].dropna()) | planned_dense
    dense = load_dense(root, dense_ids)
    try:
        published: pd.DataFrame | None = load_published()
    except (FileNotFoundError, ValueError) as exc:
        published = None
        notes.append(f"published numbers not shown: {exc}")
    title = f"Report: {name}" if name is not None else f"Report: store {root}"
    return ReportData(title, root, frame, dense, manifests, published, notes)


# ---------------------------------------------------------------------------------------- building


@dataclass
class ReportOutcome:
    """What `build_report` wrote, and what it had to leave out (with the reason)."""

    out: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    counts: dict[str, int]
    notes: list[str]


class _Builder:
    """Collects figures and tables as they are written, with the notes of what was skipped."""

    def __init__(self, out: Path, style: str) -> None:
        self.out, self.style = out, style
        self.figures: list[Path] = []
        self.tables: list[Path] = []
        self.notes: list[str] = []
        self.embedded: dict[str, list[Any]] = {}

    def figure(
        self, group: str | None, name: str, caption: str, draw: Callable[[], Figure]
    ) -> HtmlFigure | None:
        """Draws and writes one figure; it joins the Figures section under ``group`` (None: the caller
        places the returned figure itself). None, with a note, when it cannot be drawn."""
        from mtlprune.analysis.figures import save_figure
        from mtlprune.analysis.html import Figure as HtmlFigure

        try:
            fig = draw()
        except SKIPPABLE as exc:
            self.notes.append(f"figure {name} not drawn: {_reason(exc)}")
            return None
        paths = save_figure(fig, self.out / "figures" / name, style=self.style)
        self.figures += paths
        png = next(p for p in paths if p.suffix == ".png").read_bytes()
        files = [str(p.relative_to(self.out)) for p in paths]
        embedded = HtmlFigure(name, png, caption, files)
        if group is not None:
            self.embedded.setdefault(group, []).append(embedded)
        return embedded

    def table(self, name: str, markdown: str, latex: str) -> None:
        for suffix, text in ((".md", markdown), (".tex", latex)):
            path = self.out / "tables" / f"{name}{suffix}"
            atomic_write_bytes(path, text.encode("utf-8"))
            self.tables.append(path)


def _reason(exc: BaseException) -> str:
    """An exception's message without the quotes KeyError puts around it."""
    return str(exc).strip("'\"")


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


def _pick_runs(done: pd.DataFrame) -> pd.DataFrame:
    """One run per method to illustrate single-run views: highest target, lowest seed, first setting."""
    if done.empty:
        return done
    first = done.sort_values(["dataset", "tasks", "arch"]).iloc[0]
    same = done[
        (done["dataset"] == first["dataset"])
        & (done["tasks"] == first["tasks"])
        & (done["arch"] == first["arch"])
    ]
    top = same[same["target_sparsity"] == same["target_sparsity"].max()]
    return top.sort_values(["method", "seed"]).drop_duplicates("method")


def _figures(data: ReportData, builder: _Builder) -> None:
    from mtlprune.analysis import figures as F
    from mtlprune.analysis.curves import component_sparsity_columns, load_log, threshold_columns
    from mtlprune.analysis.style import StyleMap

    frame, style = data.frame, builder.style
    styles = StyleMap(str(m) for m in frame["method"].dropna().unique())
    done = frame[frame["status"] == "done"]
    for dataset, tasks in frame[["dataset", "tasks"]].drop_duplicates().itertuples(index=False):
        part = frame[(frame["dataset"] == dataset) & (frame["tasks"] == tasks)]
        slug = _slug(dataset, len(str(tasks).split(",")), "tasks")
        where = f"{dataset} ({str(tasks).replace(',', ', ')})"
        group = f"Results: {where}"
        builder.figure(
            group,
            f"metrics_{slug}",
            f"main metric of each task vs achieved sparsity, mean ± std over seeds; dashed: dense, {where}",
            lambda part=part: F.metrics_vs_sparsity(part, data.dense, styles=styles, style=style),
        )
        builder.figure(
            group,
            f"delta_{slug}",
            "ΔT and Δm vs achieved sparsity against the dense model and ΔT against the control (the dense "
            "model finetuned on the same budget, unpruned, at sparsity 0); hollow markers: published "
            f"numbers of the same setting where there are any, {where}",
            lambda part=part: F.delta_vs_sparsity(part, data.published, styles=styles, style=style),
        )
        builder.figure(
            group,
            f"allocation_{slug}",
            f"sparsity of the backbone and of each task head per method and target, {where}",
            lambda part=part: F.sparsity_allocation(part, styles=styles, style=style),
        )
        builder.figure(
            group,
            f"metrics_all_{slug}",
            f"every metric of the vocabulary vs achieved sparsity, {where}",
            lambda part=part: F.metrics_vs_sparsity(
                part, data.dense, metrics="all", styles=styles, style=style
            ),
        )
    picked = _pick_runs(done)
    if picked.empty:
        builder.notes.append("no training curves or mask figures: no finished cell")
        return
    first = picked.iloc[0]
    setting = f"{first['dataset']} · {first['arch']} · target {first['target_sparsity']:g}"
    logs: dict[str, pd.DataFrame] = {}
    for row in picked.itertuples(index=False):
        try:
            logs[str(row.method)] = load_log(data.store, str(row.run_id))
        except (FileNotFoundError, ValueError) as exc:
            builder.notes.append(f"training log of {row.method} ({row.run_id}) not shown: {exc}")
    group = "Training"
    if logs:
        builder.figure(
            group,
            "training_overview",
            f"total training loss and sparsity while training, one run per method, {setting}",
            lambda: F.training_overview(logs, styles=styles, style=style),
        )
    # Detailed curves for the methods that log per-component sparsity or thresholds (AdapMTL's family).
    detailed = [m for m, log in logs.items() if component_sparsity_columns(log) or threshold_columns(log)]
    for method in detailed[:MAX_RUN_FIGURES]:
        run_id = picked.loc[picked["method"] == method, "run_id"].iloc[0]
        builder.figure(
            group,
            f"curves_{_slug(method)}",
            f"{method} ({run_id}): loss per task, overall and per-component sparsity, thresholds, {setting}",
            lambda method=method: F.training_curves(logs[method], style=style, title=f"{method} · {setting}"),
        )
    _mask_figures(data, builder, picked, setting)


def _mask_figures(data: ReportData, builder: _Builder, picked: pd.DataFrame, setting: str) -> None:
    """Per-layer sparsity, method overlap and cross-task IoU, where the illustrated runs stored masks."""
    from mtlprune.analysis import load_masks, load_task_masks, overlap_matrix, task_iou
    from mtlprune.analysis.mask_figures import layer_sparsity_heatmap, overlap_heatmap, task_iou_curve

    runs = data.store / "runs"
    with_masks = picked[[(runs / r / "masks.npz").is_file() for r in picked["run_id"]]]
    if with_masks.empty:
        builder.notes.append("no mask figures: the illustrated runs stored no masks.npz")
        return
    group = "Masks"
    for row in with_masks.head(MAX_RUN_FIGURES).itertuples(index=False):
        builder.figure(
            group,
            f"layers_{_slug(row.method)}",
            f"per-layer sparsity of {row.method} ({row.run_id}), {setting}",
            lambda row=row: layer_sparsity_heatmap(
                load_masks(data.store, row.run_id), title=f"{row.method} · {setting}"
            ),
        )
    if len(with_masks) > 1:
        first = with_masks.iloc[0]
        builder.figure(
            group,
            "overlap",
            f"Jaccard of the kept weights between methods, {setting}, seed {first['seed']}",
            lambda: overlap_heatmap(
                overlap_matrix(
                    data.store,
                    with_masks,
                    float(first["target_sparsity"]),
                    dataset=first["dataset"],
                    arch=first["arch"],
                    seed=first["seed"],
                )
            ),
        )
    per_task = [
        r for r in with_masks.itertuples(index=False) if (runs / r.run_id / "task_masks.npz").is_file()
    ]
    for row in per_task[:MAX_RUN_FIGURES]:
        builder.figure(
            group,
            f"task_iou_{_slug(row.method)}",
            f"IoU of the tasks' own keep-masks over the backbone, {row.method} ({row.run_id}), {setting}",
            lambda row=row: task_iou_curve(task_iou(load_task_masks(data.store, row.run_id))),
        )


def _main_metrics(frame: pd.DataFrame) -> list[str]:
    from mtlprune.vocabulary import MAIN_METRIC

    out: list[str] = []
    for tasks in frame["tasks"].dropna().unique():
        for task in str(tasks).split(","):
            column = f"{task}.{MAIN_METRIC[task]}"
            if column in frame and column not in out:
                out.append(column)
    deltas = ("achieved_sparsity", "delta_t", "delta_m", "delta_t_control")
    return out + [c for c in deltas if c in frame and frame[c].notna().any()]


def _tables(data: ReportData, builder: _Builder) -> dict[str, str]:
    """Writes the .md/.tex tables; returns title → HTML of each, in page order."""
    from mtlprune.analysis.html import markdown_table_html
    from mtlprune.analysis.tables import comparison_table, table2_layout, to_latex, to_markdown

    frame = data.frame
    name = data.title.removeprefix("Report: ")
    shown: dict[str, str] = {}
    specs = [
        ("comparison", _main_metrics(frame), f"Comparison of the methods, {name}: main metric of each task"),
        ("comparison_all_metrics", None, f"Comparison of the methods, {name}: every metric"),
    ]
    for table_name, metrics, caption in specs:
        try:
            table = comparison_table(frame, metrics=metrics)
            markdown = to_markdown(table, caption=caption)
            latex = to_latex(table, caption=caption, label=f"tab:{_slug(table_name)}")
        except SKIPPABLE as exc:
            builder.notes.append(f"table {table_name} not written: {_reason(exc)}")
            continue
        builder.table(table_name, markdown, latex)
        shown[caption] = markdown_table_html(markdown, table_id=table_name)
    settings = frame[["dataset", "tasks", "arch", "target_sparsity"]].drop_duplicates()
    for dataset, tasks, arch, target in settings.sort_values(
        ["dataset", "tasks", "arch", "target_sparsity"]
    ).itertuples(index=False):
        table_name = _slug("table2", dataset, arch, len(str(tasks).split(",")), "tasks", f"{target:g}")
        caption = f"AdapMTL Table 2 layout: {dataset}, {arch}, target sparsity {target:g}"
        try:
            table = table2_layout(frame, dataset, arch, float(target), published=data.published, tasks=tasks)
            markdown = to_markdown(table, caption=caption)
            latex = to_latex(table, caption=caption, label=f"tab:{table_name}")
        except SKIPPABLE as exc:
            builder.notes.append(f"table {table_name} not written: {_reason(exc)}")
            continue
        builder.table(table_name, markdown, latex)
        shown[caption] = markdown_table_html(markdown, table_id=table_name)
    return shown


def _headroom(dense: pd.DataFrame, frame: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    """The dense model against the trivial predictor (best constant prediction), with its convergence: its
    own loss curve, and what the control row gained from the finetune budget (mtlprune.engine.convergence)."""
    from mtlprune.analysis.dense import CONTROL_TOLERANCE, dense_vs_trivial
    from mtlprune.analysis.html import frame_html

    if dense.empty or not any(str(c).startswith("trivial.") for c in dense.columns):
        notes.append("dense vs trivial predictor not shown: the dense results record no trivial predictor")
        return {}
    table = dense_vs_trivial(dense)
    keep = [c for c in table.columns if c not in ("tasks", "protocol", "width", "head_width")]
    unconverged = table[table["converged"].map(lambda v: v is False)]
    warning = (
        "<p class='note'>A dense model has not converged (its training loss still fell by more than 5% "
        "within the last 20% of training): methods that train longer can beat it for reasons that are "
        "not pruning.</p>"
        if not unconverged.empty
        else ""
    )
    controls = frame[(frame["method_name"] == "dense-finetune") & (frame["status"] == "done")]
    gains = pd.to_numeric(controls["delta_t"], errors="coerce").dropna() if "delta_t" in controls else []
    if len(gains):
        mean = float(gains.mean())
        verdict = (
            f"more than ±{CONTROL_TOLERANCE:g}: the dense model had not converged, so read the methods "
            "against the control (ΔT vs control)"
            if (gains.abs() > CONTROL_TOLERANCE).any()
            else f"within ±{CONTROL_TOLERANCE:g} for every seed"
        )
        warning += (
            f"<p>The control row (the dense model finetuned on the finetune budget, unpruned) moves ΔT by "
            f"{mean:+.1f} on average over {len(gains)} seed(s) (min {float(gains.min()):+.1f}, max "
            f"{float(gains.max()):+.1f}): {html.escape(verdict)}.</p>"
        )
    title = "Dense model against the trivial predictor (main metric per task, mean over seeds)"
    return {title: warning + frame_html(table[keep], digits=4, table_id="headroom")}


def _summaries(frame: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    from mtlprune.analysis.html import frame_html
    from mtlprune.analysis.summaries import delta_t_auc, pareto_dominated

    out: dict[str, str] = {}
    try:
        auc = delta_t_auc(frame)
        columns = [
            c
            for c in (
                "dataset",
                "arch",
                "method",
                "n_points",
                "sparsity_min",
                "sparsity_max",
                "auc",
                "auc_normalised",
                "complete",
            )
            if c in auc
        ]
        out["Area under the ΔT–sparsity curve (per method and setting)"] = frame_html(
            auc[columns], digits=2, table_id="auc"
        )
    except SKIPPABLE as exc:
        notes.append(f"ΔT AUC not computed: {_reason(exc)}")
    try:
        pareto = pareto_dominated(frame)
        keep = [c for c in pareto.columns if c not in ("tasks", "protocol", "width", "head_width")]
        out["Pareto dominance on the tasks' main metrics (per setting and target)"] = frame_html(
            pareto[keep], digits=4, table_id="pareto"
        )
    except SKIPPABLE as exc:
        notes.append(f"Pareto dominance not computed: {_reason(exc)}")
    return out


STATS_METRIC = "delta_t"
ONE_SEED = (
    "One seed per cell: no significance statement is possible. Confidence intervals, paired tests and the "
    "critical-difference diagram need at least two seeds per cell (seeds are what they resample and pair), "
    "so none are drawn; run more seeds for them."
)


def _compared_methods(frame: pd.DataFrame, metric: str) -> tuple[list[str], list[str]]:
    """(pruning methods with a finished finite value somewhere, the others): a method that never
    finished would make every block incomplete, so it is named and left out of ranks and tests."""
    from mtlprune.analysis.stats import is_control

    runs = frame[~is_control(frame) & (frame["status"] != "published")]
    done = runs[runs["status"] == "done"]
    finite = done[pd.to_numeric(done[metric], errors="coerce").notna()]
    ranked = sorted(set(finite["method"].astype(str)))
    return ranked, sorted(set(runs["method"].astype(str)) - set(ranked))


def _statistics(data: ReportData, builder: _Builder) -> Section:
    """The Statistics section: seed intervals, Friedman ranks with the CD diagram, pairwise Holm-adjusted
    tests, paired differences to the best method, rank stability; with one seed, the reason why not."""
    from mtlprune.analysis import stats as S
    from mtlprune.analysis.html import Section, frame_html, markdown_table_html
    from mtlprune.analysis.stats_figures import cd_diagram, interval_plot
    from mtlprune.analysis.stats_tables import (
        intervals_latex,
        intervals_markdown,
        pairwise_latex,
        pairwise_markdown,
        ranks_latex,
        ranks_markdown,
    )
    from mtlprune.analysis.style import StyleMap

    frame, metric, style = data.frame, STATS_METRIC, builder.style
    name = data.title.removeprefix("Report: ")
    if metric not in frame or pd.to_numeric(frame[metric], errors="coerce").notna().sum() == 0:
        return Section("statistics", "Statistics", "<p>No finished cell has a ΔT: no statistics.</p>")
    methods, without = _compared_methods(frame, metric)
    intro = (
        f"<p>On ΔT of the runs (published rows have no seeds). Seeds are the resampling unit, and cells of "
        f"one setting and seed share a dense model, so every comparison pairs the same seeds. The "
        f"<code>{S.CONTROL_METHOD}</code> control is shown in the intervals, never ranked or tested.</p>"
    )
    if without:
        intro += f"<p>No finished ΔT, so not ranked or tested: {html.escape(', '.join(without))}.</p>"
    if S.max_seeds_per_cell(frame) < 2:
        body = f'<p class="note" id="stats-one-seed">{html.escape(ONE_SEED)}</p>' + intro
        try:
            ranks = S.average_ranks(frame, metric, methods=methods)
            n_blocks = int(ranks["n_blocks"].iloc[0]) if len(ranks) else 0
            body += (
                f"<p>Average ranks over {n_blocks} complete blocks (setting, target, seed), descriptive "
                "only:</p>"
            ) + frame_html(ranks, digits=2, table_id="stats-ranks-descriptive")
        except SKIPPABLE as exc:
            builder.notes.append(f"average ranks not computed: {_reason(exc)}")
        return Section("statistics", "Statistics", body)
    styles = StyleMap(str(m) for m in frame["method"].dropna().unique())
    children: list[Section] = []
    try:
        intervals = S.seed_intervals(frame, metric)
        figure = builder.figure(
            None,
            "stats_intervals",
            "mean ΔT over seeds with its 95% percentile-bootstrap interval, per method and target; "
            "dashed: the dense-finetune control; dotted: dense",
            lambda: interval_plot(intervals, styles=styles, style=style),
        )
        caption = f"Mean ΔT and 95% interval over seeds, {name}"
        markdown = intervals_markdown(intervals, caption=caption)
        builder.table("stats_intervals", markdown, intervals_latex(intervals, caption, "tab:stats_intervals"))
        body = (figure.html() if figure else "") + markdown_table_html(markdown, table_id="stats_intervals")
        children.append(Section("stats-intervals", "Mean ΔT and 95% interval over seeds", body))
    except SKIPPABLE as exc:
        builder.notes.append(f"seed intervals not computed: {_reason(exc)}")
    best: str | None = None
    try:
        result = S.friedman_test(frame, metric, methods=methods)
    except SKIPPABLE as exc:
        builder.notes.append(f"Friedman test and CD diagram not computed: {_reason(exc)}")
    else:
        best = str(result.ranks["method"].iloc[0])
        figure = builder.figure(
            None,
            "stats_cd",
            f"critical-difference diagram: mean rank of ΔT over {result.n_blocks} complete blocks "
            f"(setting, target, seed); bars join methods closer than CD = {result.cd:.2f} (Nemenyi, "
            f"α = {result.alpha:g})",
            lambda: cd_diagram(result, styles=styles, style=style),
        )
        caption = f"Average ranks of the methods, {name}"
        markdown = ranks_markdown(result, caption=caption)
        builder.table("stats_ranks", markdown, ranks_latex(result, caption, "tab:stats_ranks"))
        body = (figure.html() if figure else "") + markdown_table_html(markdown, table_id="stats_ranks")
        if result.n_dropped:
            reasons = Counter(str(r) for r in result.dropped["reason"])
            items = "".join(f"<li>{n} × {html.escape(r)}</li>" for r, n in reasons.most_common())
            body += f"<p>{result.n_dropped} incomplete block(s) left out:</p><ul>{items}</ul>"
        children.append(Section("stats-ranks", "Average ranks, Friedman test, critical difference", body))
    try:
        tests = S.pairwise_tests(frame, metric, methods=methods)
        if tests.empty:
            raise ValueError("fewer than two methods to compare")
        caption = f"Pairwise comparison of the methods, {name}"
        markdown = pairwise_markdown(tests, caption=caption)
        builder.table("stats_pairwise", markdown, pairwise_latex(tests, caption, "tab:stats_pairwise"))
        children.append(
            Section(
                "stats-pairwise",
                "Pairwise Wilcoxon tests, Holm-adjusted",
                markdown_table_html(markdown, table_id="stats_pairwise"),
            )
        )
    except SKIPPABLE as exc:
        builder.notes.append(f"pairwise tests not computed: {_reason(exc)}")
    if best is not None and len(methods) > 1:
        diffs = S.paired_differences(frame, metric, baseline=best, methods=methods)
        keep = [c for c in diffs.columns if c not in ("tasks", "protocol", "width", "head_width", "method_b")]
        children.append(
            Section(
                "stats-differences",
                f"Paired difference to the best-ranked method ({best})",
                f"<p>ΔT of each method minus {html.escape(best)}'s, per setting and target, over the seeds "
                "both finished, with its 95% paired-bootstrap interval.</p>"
                + frame_html(diffs[keep], digits=2, table_id="stats-differences"),
            )
        )
    try:
        stability = S.rank_stability(frame, metric, methods=methods)
        text = (
            f"<p>Kendall's τ between the method rankings of every two seeds ({stability.n_seeds} seeds): "
            f"mean {stability.mean_tau:.2f}, min {stability.min_tau:.2f}.</p>"
        )
        children.append(
            Section(
                "stats-stability",
                "Rank stability across seeds",
                text + frame_html(stability.pairs, digits=3, table_id="stats-stability"),
            )
        )
    except SKIPPABLE as exc:
        builder.notes.append(f"rank stability not computed: {_reason(exc)}")
    intro += "<p>Also written as Markdown and LaTeX under <code>tables/</code> (<code>stats_*</code>).</p>"
    return Section("statistics", "Statistics", intro, children)


def _failure_details(store: Path, run_id: str) -> str:
    record = Store(store).status_record(run_id)
    trace = record.traceback if record is not None else None
    return f"<details><summary>traceback</summary><pre>{html.escape(trace)}</pre></details>" if trace else ""


def _tr(status: str, cells: list[tuple[str, bool]], extra: str = "") -> str:
    """One table row; each cell is (text, left-aligned); text is escaped, ``extra`` HTML ends the last."""
    tds = [f"<td{LEFT if left else ''}>{html.escape(text)}</td>" for text, left in cells]
    if extra:
        tds[-1] = tds[-1].removesuffix("</td>") + extra + "</td>"
    return f'<tr class="{html.escape(status)}">{"".join(tds)}</tr>'


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _collapsed_groups(frame: pd.DataFrame) -> list[tuple[str, float, int, int, int, list[str]]]:
    """(method, target, seeds, min layers, max layers, components) per method and target whose finished
    cells pruned whole layers to zero density (load.collapsed)."""
    if "collapsed_layers" not in frame:
        return []
    counts = pd.to_numeric(frame["collapsed_layers"], errors="coerce").fillna(0)
    hit = frame[(frame["status"] == "done") & (counts > 0)]
    groups = []
    for (method, target), rows in hit.groupby(["method", "target_sparsity"], sort=True):
        parts = sorted({c for value in rows["collapsed_components"] for c in str(value).split(",") if c})
        layers = pd.to_numeric(rows["collapsed_layers"], errors="coerce")
        groups.append((str(method), float(target), len(rows), int(layers.min()), int(layers.max()), parts))
    return groups


def collapse_lines(frame: pd.DataFrame) -> list[str]:
    """One printed line per collapsed method and target (see :func:`_collapse_note`)."""
    return [
        f"{method} at {target:g}: {lo}–{hi} layers pruned to zero density in {', '.join(parts)} "
        f"({seeds} seed(s)); a head with a fully pruned layer predicts a constant"
        for method, target, seeds, lo, hi, parts in _collapsed_groups(frame)
    ]


def _collapse_note(frame: pd.DataFrame) -> str:
    """Finished cells with layers pruned to zero density (layer collapse), grouped by method and target:
    their metrics for a disconnected head are a constant prediction, which the tables cannot show."""
    groups = _collapsed_groups(frame)
    if not groups:
        return ""
    items = [
        f"<li>{html.escape(method)} at {target:g}: {seeds} seed(s), {lo}–{hi} layers at zero density in "
        f"{html.escape(', '.join(parts))}</li>"
        for method, target, seeds, lo, hi, parts in groups
    ]
    return (
        "<p class='note'>Layer collapse: these cells pruned whole layers to zero density. A head with a "
        "fully pruned layer predicts a constant (its task's metrics are those of the trivial predictor), "
        "so their rows measure the collapse, not a sparsity trade-off:</p><ul>" + "".join(items) + "</ul>"
    )


def _attention(data: ReportData) -> str:
    """Failed, running/pending and missing cells and dense stages, each with its error: never dropped;
    then finished cells whose masks collapsed whole layers."""
    frame = data.frame
    unfinished = frame[frame["status"] != "done"]
    dense_bad = data.dense[data.dense["status"] != "done"] if not data.dense.empty else data.dense
    if unfinished.empty and dense_bad.empty:
        return f"<p>All {len(frame)} cells finished.</p>" + _collapse_note(frame)
    order = {"failed": 0, "running": 1, "pending": 2, MISSING: 3}
    ranked = unfinished.assign(_o=unfinished["status"].map(order).fillna(9))
    ranked = ranked.sort_values(["_o", "dataset", "arch", "method", "target_sparsity", "seed"])
    rows = []
    for row in ranked.itertuples(index=False):
        status = str(row.status)
        details = _failure_details(data.store, str(row.run_id)) if status == "failed" else ""
        cells = [(status, True), (str(row.run_id), True), (str(row.dataset), True), (str(row.arch), True)]
        cells += [(str(row.method), True), (f"{float(row.target_sparsity):g}", False), (str(row.seed), False)]
        rows.append(_tr(status, [*cells, (_text(row.error), True)], details))
    for row in dense_bad.itertuples(index=False):
        status = str(row.status)
        cells = [(f"dense {status}", True), (str(row.run_id), True), (str(row.dataset), True)]
        cells += [(str(row.arch), True), ("(dense stage)", True), ("0", False), (str(row.seed), False)]
        rows.append(_tr(status, [*cells, (_text(row.error), True)]))
    heads = [("status", True), ("run", True), ("dataset", True), ("arch", True), ("method", True)]
    heads += [("target", False), ("seed", False), ("error", True)]
    head = "".join(f"<th{LEFT if left else ''}>{h}</th>" for h, left in heads)
    return (
        f"<p>{len(unfinished)} of {len(frame)} cells have no result; they are left out of the figures and "
        "marked in the tables.</p>"
        f'<div class="scroll"><table id="attention-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>" + _collapse_note(frame)
    )


def _run_provenance(data: ReportData) -> dict[str, Any]:
    """What the runs' result.json files say about where and with what they ran, summarised."""
    commits: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    starts, ends, wall = [], [], 0.0
    store = Store(data.store)
    run_ids = [
        *data.frame.loc[data.frame["status"] == "done", "run_id"],
        *data.dense.loc[data.dense["status"] == "done", "run_id"],
    ]
    for run_id in run_ids:
        if not store.is_done(str(run_id)):
            continue
        result = store.result(str(run_id))
        prov = result.provenance
        wall += result.wall_s
        devices[str(prov.get("device") or result.device or "unknown")] += 1
        if prov:
            dirty = {True: " (dirty tree)", False: "", None: ""}.get(prov.get("dirty"), "")
            commits[f"{prov.get('commit') or 'unknown'}{dirty}"] += 1
            hosts[str(prov.get("hostname") or "unknown")] += 1
            if prov.get("packages"):
                packages[", ".join(f"{k} {v}" for k, v in sorted(prov["packages"].items()) if v)] += 1
            if prov.get("start"):
                starts.append(str(prov["start"]))
            if prov.get("end"):
                ends.append(str(prov["end"]))
    out: dict[str, Any] = {"stages with a result": len(run_ids), "total wall time (h)": f"{wall / 3600:.2f}"}
    for label, counter in (
        ("device", devices),
        ("git commit", commits),
        ("host", hosts),
        ("packages", packages),
    ):
        if counter:
            out[label] = "; ".join(f"{k}: {n} stage(s)" for k, n in counter.most_common())
    if starts:
        out["first start (UTC)"] = min(starts)
    if ends:
        out["last end (UTC)"] = max(ends)
    if not commits:
        out["note"] = "the results record no provenance (written before provenance was stored)"
    return out


def build_report(
    source: str | Path,
    store: str | Path | None = None,
    out: str | Path | None = None,
    style: str = "paper",
    only: Selection | list[str] | None = None,
) -> ReportOutcome:
    """Figures, tables and ``report.html`` for a config (via its manifest) or a whole store folder;
    ``only`` (``--only`` clauses) reports the selected cells, by default into ``report-<selection>``."""
    from mtlprune.analysis.html import Section, key_value_html, pre_json, render_page
    from mtlprune.analysis.style import figure_style

    figure_style(style)  # an unknown style fails before any work
    if not isinstance(only, Selection):
        only = Selection.parse(only)
    only.check_record_keys()
    root, manifests, name = resolve_source(source, store)
    data = collect(root, manifests, name, only)
    folder = "report" + (f"-{re.sub(r'[^A-Za-z0-9._=-]+', '_', only.describe())}" if only else "")
    out_dir = Path(out) if out is not None else (root / name / folder if name else root / folder)
    builder = _Builder(out_dir, style)
    builder.notes += data.notes
    _figures(data, builder)
    tables = _tables(data, builder)
    summaries = {**_headroom(data.dense, data.frame, builder.notes), **_summaries(data.frame, builder.notes)}
    counts = dict(Counter(str(s) for s in data.frame["status"]).most_common())

    sections = [Section("attention", "Cells without a result", _attention(data))]
    figure_sections = [
        Section(_slug("fig", group), group, "\n".join(f.html() for f in figs))
        for group, figs in builder.embedded.items()
    ]
    no_figure = "" if figure_sections else "<p>No figure could be drawn; see Left out.</p>"
    sections.append(Section("figures", "Figures", no_figure, figure_sections))
    table_sections = [
        Section(_slug("table", i), title, body) for i, (title, body) in enumerate(tables.items())
    ]
    sections.append(
        Section(
            "tables",
            "Tables",
            "<p>Also written as Markdown and LaTeX under <code>tables/</code>.</p>",
            table_sections,
        )
    )
    sections.append(_statistics(data, builder))
    if summaries:
        sections.append(
            Section(
                "summaries",
                "Summaries",
                "",
                [Section(_slug("summary", i), t, b) for i, (t, b) in enumerate(summaries.items())],
            )
        )
    spec_body = (
        "".join(
            f"<h3>{html.escape(m.name)}</h3><p><code>{html.escape(str(m.path))}</code></p>{pre_json(m.spec)}"
            for m in manifests
        )
        or "<p>No matrix manifest in this store: every run in it is reported.</p>"
    )
    sections.append(Section("spec", "Matrix spec", spec_body))
    prov_body = "<h3>Runs</h3>" + key_value_html(_run_provenance(data))
    for m in manifests:
        if m.provenance:
            prov_body += f"<h3>Planned ({html.escape(m.name)})</h3>" + key_value_html(m.provenance)
    sections.append(Section("provenance", "Provenance", prov_body))
    if builder.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in builder.notes)
        sections.append(Section("notes", "Left out", f'<ul class="note">{items}</ul>'))

    count_html = "".join(
        f'<span class="{html.escape(s)}">{n} {html.escape(s)}</span>' for s, n in counts.items()
    )
    header = (
        f"<p>Store <code>{html.escape(str(root))}</code> · {len(data.frame)} cells · generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · figure style {html.escape(style)}</p>"
        f'<p class="counts">{count_html}</p>'
    )
    page = render_page(data.title, header, sections)
    html_path = out_dir / REPORT_HTML
    atomic_write_bytes(html_path, page.encode("utf-8"))
    return ReportOutcome(out_dir, html_path, builder.figures, builder.tables, counts, builder.notes)
