"""The report's tables: the comparison of all cells, the cells whose achieved sparsity misses the target,
AdapMTL's Table 2 layout per setting and target, the dense model against the trivial predictor, ΔT AUC and
Pareto dominance."""

from __future__ import annotations

import html
import warnings

import pandas as pd

from mtlprune.analysis.report.builder import SKIPPABLE, Builder, reason, slug
from mtlprune.analysis.report.collect import ReportData


def _main_metrics(frame: pd.DataFrame) -> list[str]:
    from mtlprune.vocabulary import MAIN_METRIC

    out: list[str] = []
    for tasks in frame["tasks"].dropna().unique():
        for task in str(tasks).split(","):
            column = f"{task}.{MAIN_METRIC[task]}"
            if column in frame and column not in out:
                out.append(column)
    deltas = ("achieved_sparsity", "delta_t", "delta_m", "delta_t_control", "delta_m_stl")
    return out + [c for c in deltas if c in frame and frame[c].notna().any()]


def _render(table: pd.DataFrame, caption: str, name: str, env: str, notes: list[str]) -> tuple[str, str]:
    """Markdown and LaTeX of one table; a table without a finished cell is noted once (not warned twice)."""
    from mtlprune.analysis.tables import EmptyTableWarning, to_latex, to_markdown

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyTableWarning)
        markdown = to_markdown(table, caption=caption)
        latex = to_latex(table, caption=caption, label=f"tab:{slug(name)}", env=env)
    if any(issubclass(w.category, EmptyTableWarning) for w in caught):
        notes.append(f"table {name} is empty: no cell has finished yet")
    return markdown, latex


def table_sections(data: ReportData, builder: Builder) -> dict[str, str]:
    """Writes the .md/.tex tables; returns title → HTML of each, in page order."""
    from mtlprune.analysis.html import markdown_table_html
    from mtlprune.analysis.labels import setting_title
    from mtlprune.analysis.tables import comparison_table, table2_layout

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
            env = "table*" if metrics is None else "table"
            markdown, latex = _render(table, caption, table_name, env, builder.notes)
        except SKIPPABLE as exc:
            builder.notes.append(f"table {table_name} not written: {reason(exc)}")
            continue
        builder.table(table_name, markdown, latex)
        shown[caption] = markdown_table_html(markdown, table_id=table_name)
    shown.update(_misses_section(frame, name, builder))
    settings = frame[["dataset", "tasks", "arch", "target_sparsity"]].drop_duplicates()
    for dataset, tasks, arch, target in settings.sort_values(
        ["dataset", "tasks", "arch", "target_sparsity"]
    ).itertuples(index=False):
        table_name = slug("table2", dataset, arch, len(str(tasks).split(",")), "tasks", f"{target:g}")
        caption = (
            f"Every metric per method (AdapMTL Table 2 layout): {setting_title(dataset, arch)}, "
            f"{len(str(tasks).split(','))} tasks, target sparsity {100 * target:g}%"
        )
        try:
            table = table2_layout(frame, dataset, arch, float(target), published=data.published, tasks=tasks)
            markdown, latex = _render(table, caption, table_name, "table*", builder.notes)
        except SKIPPABLE as exc:
            builder.notes.append(f"table {table_name} not written: {reason(exc)}")
            continue
        builder.table(table_name, markdown, latex)
        shown[caption] = markdown_table_html(markdown, table_id=table_name)
    return shown


def _misses_section(frame: pd.DataFrame, name: str, builder: Builder) -> dict[str, str]:
    """Achieved against target sparsity: the cells more than 0.1 pp off their target (after the comparison
    tables, whose captions name them too); a note instead when every finished cell is within."""
    from mtlprune.analysis.html import markdown_table_html
    from mtlprune.analysis.tables import sparsity_misses, sparsity_misses_latex, sparsity_misses_markdown

    table_name = "sparsity_misses"
    try:
        table = sparsity_misses(frame)
    except SKIPPABLE as exc:
        builder.notes.append(f"table {table_name} not written: {reason(exc)}")
        return {}
    if table.empty:
        builder.notes.append(
            f"table {table_name} not written: every finished cell is within 0.1 pp of its target sparsity"
        )
        return {}
    caption = f"Achieved against target sparsity, {name}: cells that miss the target by more than 0.1 pp"
    markdown = sparsity_misses_markdown(table, caption)
    builder.table(table_name, markdown, sparsity_misses_latex(table, caption, label=f"tab:{table_name}"))
    return {caption: markdown_table_html(markdown, table_id=table_name)}


def headroom_tables(dense: pd.DataFrame, frame: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    """The dense model against the trivial predictor (best constant prediction), with its convergence: its
    own loss curve, and what the control row gained from the finetune budget (mtlprune.engine.convergence)."""
    from mtlprune.analysis.dense_results import CONTROL_TOLERANCE, dense_vs_trivial
    from mtlprune.analysis.html import frame_html
    from mtlprune.analysis.labels import display_frame

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
    return {title: warning + frame_html(display_frame(table[keep]), digits=3, table_id="headroom")}


def summary_tables(frame: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    from mtlprune.analysis.html import frame_html
    from mtlprune.analysis.labels import display_frame
    from mtlprune.analysis.load import on_pruning_axis
    from mtlprune.analysis.summaries import delta_t_auc, pareto_dominated

    out: dict[str, str] = {}
    frame = on_pruning_axis(frame)  # both summaries are over pruning sparsity (targets)
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
            display_frame(auc[columns]), digits=2, table_id="auc"
        )
    except SKIPPABLE as exc:
        notes.append(f"ΔT AUC not computed: {reason(exc)}")
    try:
        pareto = pareto_dominated(frame)
        keep = [c for c in pareto.columns if c not in ("tasks", "protocol", "width", "head_width")]
        out["Pareto dominance on the tasks' main metrics (per setting and target)"] = frame_html(
            display_frame(pareto[keep]), digits=3, table_id="pareto"
        )
    except SKIPPABLE as exc:
        notes.append(f"Pareto dominance not computed: {reason(exc)}")
    return out
