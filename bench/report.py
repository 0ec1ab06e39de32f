"""Reports from stored results: the end-of-run summary of `bench run`, and `bench report`'s full report.

`bench report` works from the store alone and never imports torch (nor the method plugins, which do):
given a config it reads only the YAML ``name`` key and then the matrix's manifest
(``<store>/<name>/matrix.json``, see :mod:`bench.manifest`), so cells that were planned but never started
are listed as missing; given a store folder it reports every run in it (and the cells that any manifest in
it lists without a run). Output, under ``--out`` (default ``<store>/<name>/report`` or ``<store>/report``):

- ``figures/*.pdf|png``: metrics and ΔT/Δm vs sparsity, per-component allocation, training curves, mask
  analytics where masks are stored;
- ``tables/*.md|tex``: the comparison of all cells and AdapMTL's Table 2 layout per setting and target;
- ``report.html``: one self-contained page with all of it, the failed and missing cells with their errors,
  the matrix spec and the provenance of the runs.

A figure or table that cannot be drawn (no finished cell of a setting, no masks) is skipped with the
reason written into the page; failed, running and missing cells are never dropped silently.
"""

from __future__ import annotations

import html
import io
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from bench.analysis import load_results, summary_table
from bench.analysis.load import BASE_COLUMNS
from bench.manifest import MANIFEST, Manifest, read_manifest
from bench.store import RESULT, STATUS, Store, atomic_write_bytes, read_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from bench.spec import MatrixSpec

__all__ = ["ReportOutcome", "build_report", "collect", "matrix_name", "resolve_source", "write_run_report"]

DEFAULT_STORE = Path("results")
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
}


# ------------------------------------------------------------------------------ end-of-run summary


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def write_run_report(matrix: MatrixSpec, store: Store, console: Console) -> Path:
    """``<store>/<matrix name>/results.parquet`` + ΔT figure (PNG, PDF) + the printed summary."""
    from rich.table import Table

    from bench.analysis.figures import delta_t_vs_sparsity

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
            if cell["run_id"] in seen:
                continue
            seen.add(cell["run_id"])
            rows.append(
                {
                    "run_id": cell["run_id"],
                    "dataset": cell["dataset"],
                    "tasks": ",".join(cell["tasks"]),
                    "arch": cell["arch"],
                    "width": cell.get("width"),
                    "head_width": cell.get("head_width"),
                    "method": cell["method"],
                    "method_name": cell["method_name"],
                    "target_sparsity": float(cell["target"]),
                    "seed": cell["seed"],
                    "protocol": cell.get("protocol", "standard"),
                    "status": MISSING,
                    "error": f"planned in {manifest.name}, never started (no run folder)",
                    "dense_run_id": cell["dense_run_id"],
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


def collect(root: Path, manifests: list[Manifest], name: str | None) -> ReportData:
    """Cells (with missing ones added), dense stages and published numbers for a report."""
    from bench.analysis import load_published
    from bench.analysis.dense import load_dense

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
    dense_ids = set(frame["dense_run_id"].dropna()) | {d["run_id"] for m in manifests for d in m.dense}
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

    def figure(self, group: str, name: str, caption: str, draw: Callable[[], Figure]) -> None:
        from bench.analysis.figures import save_figure
        from bench.analysis.html import Figure as HtmlFigure

        try:
            fig = draw()
        except SKIPPABLE as exc:
            self.notes.append(f"figure {name} not drawn: {_reason(exc)}")
            return
        paths = save_figure(fig, self.out / "figures" / name, style=self.style)
        self.figures += paths
        png = next(p for p in paths if p.suffix == ".png").read_bytes()
        files = [str(p.relative_to(self.out)) for p in paths]
        self.embedded.setdefault(group, []).append(HtmlFigure(name, png, caption, files))

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
    from bench.analysis import figures as F
    from bench.analysis.curves import component_sparsity_columns, load_log, threshold_columns
    from bench.analysis.style import StyleMap

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
            f"ΔT and Δm vs achieved sparsity; hollow markers: published numbers of the same setting, {where}",
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
    from bench.analysis import load_masks, load_task_masks, overlap_matrix, task_iou
    from bench.analysis.mask_figures import layer_sparsity_heatmap, overlap_heatmap, task_iou_curve

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
    from bench.vocabulary import MAIN_METRIC

    out: list[str] = []
    for tasks in frame["tasks"].dropna().unique():
        for task in str(tasks).split(","):
            column = f"{task}.{MAIN_METRIC[task]}"
            if column in frame and column not in out:
                out.append(column)
    return out + [c for c in ("achieved_sparsity", "delta_t", "delta_m") if c in frame]


def _tables(data: ReportData, builder: _Builder) -> dict[str, str]:
    """Writes the .md/.tex tables; returns title → HTML of each, in page order."""
    from bench.analysis.html import markdown_table_html
    from bench.analysis.tables import comparison_table, table2_layout, to_latex, to_markdown

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


def _summaries(frame: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    from bench.analysis.html import frame_html
    from bench.analysis.summaries import delta_t_auc, pareto_dominated

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


def _failure_details(store: Path, run_id: str) -> str:
    path = store / "runs" / run_id / STATUS
    record = read_json(path) if path.is_file() else {}
    trace = record.get("traceback")
    return f"<details><summary>traceback</summary><pre>{html.escape(trace)}</pre></details>" if trace else ""


def _tr(status: str, cells: list[tuple[str, bool]], extra: str = "") -> str:
    """One table row; each cell is (text, left-aligned); text is escaped, ``extra`` HTML ends the last."""
    tds = [f"<td{LEFT if left else ''}>{html.escape(text)}</td>" for text, left in cells]
    if extra:
        tds[-1] = tds[-1].removesuffix("</td>") + extra + "</td>"
    return f'<tr class="{html.escape(status)}">{"".join(tds)}</tr>'


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _attention(data: ReportData) -> str:
    """Failed, running/pending and missing cells and dense stages, each with its error: never dropped."""
    frame = data.frame
    unfinished = frame[frame["status"] != "done"]
    dense_bad = data.dense[data.dense["status"] != "done"] if not data.dense.empty else data.dense
    if unfinished.empty and dense_bad.empty:
        return f"<p>All {len(frame)} cells finished.</p>"
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
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _run_provenance(data: ReportData) -> dict[str, Any]:
    """What the runs' result.json files say about where and with what they ran, summarised."""
    commits: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    starts, ends, wall = [], [], 0.0
    run_ids = [
        *data.frame.loc[data.frame["status"] == "done", "run_id"],
        *data.dense.loc[data.dense["status"] == "done", "run_id"],
    ]
    for run_id in run_ids:
        path = data.store / "runs" / str(run_id) / RESULT
        if not path.is_file():
            continue
        result = read_json(path)
        prov = result.get("provenance") or {}
        wall += float(result.get("wall_s") or 0.0)
        devices[str(prov.get("device") or result.get("device") or "unknown")] += 1
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
) -> ReportOutcome:
    """Figures, tables and ``report.html`` for a config (via its manifest) or a whole store folder."""
    from bench.analysis.html import Section, key_value_html, pre_json, render_page
    from bench.analysis.style import figure_style

    figure_style(style)  # an unknown style fails before any work
    root, manifests, name = resolve_source(source, store)
    data = collect(root, manifests, name)
    out_dir = Path(out) if out is not None else (root / name / "report" if name else root / "report")
    builder = _Builder(out_dir, style)
    builder.notes += data.notes
    _figures(data, builder)
    tables = _tables(data, builder)
    summaries = _summaries(data.frame, builder.notes)
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
