"""Paper tables from a `load_results` frame: mean ± std per cell over seeds, rendered to Markdown and LaTeX.

Two shapes:

* :func:`comparison_table` — one row per benchmark cell (method × setting), ``<col>.mean`` / ``.std`` /
  ``.n`` over its finished seeds, blocks of rows per (dataset, arch, target) by default. Failed, pending and
  missing cells stay in the table with their status: a method that crashed at 95% must show up as a
  "failed" row, not as a method that was never tried.
* :func:`table2_layout` — AdapMTL's Table 2 at one (dataset, arch, target): every metric of every task,
  ΔT per task and overall, per-component sparsity, one row per method (means only, as printed there), with
  the paper rows of that setting appended and marked "(published)".
* :func:`sparsity_misses` — achieved against target sparsity: every cell whose mean achieved sparsity misses
  its target by more than 0.1 pp (:data:`SPARSITY_MISS`), with the difference; rendered by
  :func:`sparsity_misses_markdown` / :func:`sparsity_misses_latex`. A comparison or Table-2 table that shows
  the achieved sparsity names such rows in its caption.

:func:`to_markdown` and :func:`to_latex` render either shape (the frame's ``attrs["kind"]`` says which).
Rendering choices, fixed so that two tables of the benchmark always read the same:

* mIoU, pixel accuracy and sparsities are stored as fractions and shown in % (as the papers print them);
  everything else in its stored unit.
* Best and second-best values are compared **as displayed** (after rounding), direction-aware from
  :data:`mtlprune.vocabulary.DIRECTIONS` (ΔT/Δm: higher is better), within a block of rows that share the
  setting, task set and evaluation protocol. The best distinct value is bold; the second-best distinct value
  is underlined only when a column has at least three distinct values, so that an underline never marks
  the worst entry. Columns without a direction (sparsity, costs) are never highlighted; neither are dense
  reference rows.
* A cell with no finished seed reads "failed" (at least one seed failed) or "—" (pending, running,
  missing); a finished cell whose value is undefined (a diverged seed, ΔT without a dense result) reads "–".
  A cell with fewer finished seeds than planned says so next to its method ("n=1 of 2").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtlprune.analysis.labels import arch_title, column_label, column_name, setting_title
from mtlprune.analysis.latex import latex_escape, latex_table
from mtlprune.analysis.seeds import FAILED, GROUP_KEYS, MEASURED, OPTIONAL_KEYS
from mtlprune.vocabulary import DELTA_METRICS, HIGHER, METRICS, dataset_title

__all__ = [
    "EmptyTableWarning",
    "comparison_table",
    "sparsity_misses",
    "sparsity_misses_latex",
    "sparsity_misses_markdown",
    "table2_latex",
    "table2_layout",
    "table2_markdown",
    "to_latex",
    "to_markdown",
]

COMPARISON = "comparison"
TABLE2 = "table2"
PUBLISHED = "published"
DENSE = "dense"
# Cell status values of a table row beyond the per-run ones of load_results.
PARTIAL = "partial"
MISSING = "missing"

# Decimals per column (default 2): small-valued error metrics need more.
DIGITS: dict[str, int] = {
    "depth_zbuffer.abs_err": 3,
    "depth_zbuffer.rel_err": 3,
    "segment_semantic.err": 3,
    "normal.cos_sim": 3,
    "keypoints2d.err": 4,
    "edge_texture.err": 4,
}
NO_VALUES = "No cell has finished yet: the table has no values."
# A cell whose mean achieved sparsity is further than this from its target (a fraction: 0.1 pp) is listed by
# sparsity_misses and named in the caption of a table that shows the achieved sparsity.
SPARSITY_MISS = 0.001
MISSES_NAMED = 4  # rows a caption names (the rest are counted; sparsity_misses lists them all)


class EmptyTableWarning(UserWarning):
    """A table without a single finished cell (it still renders, and its caption says so)."""


# Header text of the identity columns a table may show.
KEY_HEADERS: dict[str, str] = {
    "dataset": "Dataset",
    "tasks": "Tasks",
    "arch": "Arch",
    "width": "Width",
    "head_width": "Head width",
    "target_sparsity": "Target",
    "protocol": "Protocol",
}
# Identity columns that a row's label already carries (published rows: "snip (published)").
LABEL_KEYS: frozenset[str] = frozenset({"method", "source", "table", "paper_label", "starts_from"})


# --------------------------------------------------------------------------------------------- building


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise KeyError(
            f"{what} needs the load_results columns {missing}; the frame has {list(frame.columns)}"
        )


def _cell_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that identify one benchmark cell (as in mtlprune.analysis.seeds.aggregate)."""
    return list(GROUP_KEYS) + [c for c in OPTIONAL_KEYS if c in frame]


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and pd.to_numeric(frame[column], errors="coerce").notna().any()


def _default_metrics(frame: pd.DataFrame) -> list[str]:
    """Every vocabulary metric column with a value, in vocabulary order (datasets of the frame first)."""
    datasets = [d for d in pd.unique(frame["dataset"].dropna()) if d in METRICS]
    datasets += [d for d in METRICS if d not in datasets]
    out: list[str] = []
    for dataset in datasets:
        for task, metrics in METRICS[dataset].items():
            for metric in metrics:
                column = f"{task}.{metric}"
                if column not in out and _has_values(frame, column):
                    out.append(column)
    if "delta_t" in frame:
        out.append("delta_t")
    return out


def _check_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a list of column names, not the string {metrics!r}")
    unknown = [m for m in metrics if m not in frame]
    if unknown:
        raise KeyError(f"metric column(s) {unknown} not in the frame; it has {list(frame.columns)}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics {list(metrics)} lists a column more than once")
    return list(metrics)


def _first_line(error: Any) -> str | None:
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else None


def _cell_status(statuses: pd.Series) -> str:
    """done / published when every seed finished, partial, failed (nothing finished, one failed), else the
    one shared unfinished status (pending, running, ...) or "missing"."""
    measured = statuses.isin(MEASURED)
    if measured.all():
        return PUBLISHED if (statuses == PUBLISHED).all() else "done"
    if measured.any():
        return PARTIAL
    if (statuses == FAILED).any():
        return FAILED
    unique = pd.unique(statuses)
    return str(unique[0]) if len(unique) == 1 else MISSING


def _summarise(keys: dict[str, Any], cell: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """One table row: counts, status, first error line and mean/std/n of every metric over finished seeds.

    As in `aggregate`, a NaN in any finished seed makes the mean NaN (a partial mean would hide a diverged
    seed); ``.n`` counts the finished seeds that have a value.
    """
    statuses = cell["status"].fillna(MISSING).astype(str)
    measured = cell[statuses.isin(MEASURED)]
    n_failed = int((statuses == FAILED).sum())
    errors = [_first_line(e) for e in cell.loc[statuses == FAILED, "error"]] if "error" in cell else []
    row: dict[str, Any] = dict(keys)
    row.update(
        status=_cell_status(statuses),
        n_seeds=len(measured),
        n_failed=n_failed,
        n_missing=len(cell) - len(measured) - n_failed,
        error=next((e for e in errors if e), None),
    )
    for column in metrics:
        try:
            values = pd.to_numeric(measured[column]).astype(float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {column!r} holds non-numeric values: {exc}") from None
        n = int(values.notna().sum())
        if values.empty or values.isna().any():
            mean = std = math.nan
        else:
            mean = float(values.mean())
            std = float(values.std(ddof=1)) if n > 1 else math.nan
        row[f"{column}.mean"], row[f"{column}.std"], row[f"{column}.n"] = mean, std, n
    return row


def _labels(table: pd.DataFrame) -> pd.Series:
    """Display label: the method, "(published)" for paper rows, plus the start point where a paper table
    lists a method twice (DiSparse's two Random rows)."""
    labels = table["method"].astype(str)
    if "status" not in table or "source" not in table:
        return labels
    published = table["status"] == PUBLISHED
    if not published.any():
        return labels
    pub = table[published]
    suffix = pd.Series("", index=pub.index)
    if "table" in pub and "starts_from" in pub:
        ident = [pub[c].astype(str) for c in ("source", "table", "method")]
        twice = pub.groupby(ident)["starts_from"].transform("nunique") > 1
        suffix = suffix.where(~twice, ", from " + pub["starts_from"].astype(str))
    labels.loc[published] = pub["method"].astype(str) + " (published" + suffix + ")"
    return labels


def _sort(table: pd.DataFrame, leading: list[str], then: Sequence[str] = ()) -> pd.DataFrame:
    """Leading keys ascending, then our rows before published rows, then ``then``, then label (stable)."""
    table = table.assign(_published=table["status"] == PUBLISHED)
    return (
        table.sort_values([*leading, "_published", *then, "label"], kind="stable", na_position="last")
        .drop(columns="_published")
        .reset_index(drop=True)
    )


def _cell_rows(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per cell in order of first appearance, labelled, unsorted."""
    keys = _cell_keys(frame)
    rows = [
        _summarise(dict(zip(keys, key, strict=True)), cell, metrics)
        for key, cell in frame.groupby(keys, sort=False, dropna=False)
    ]
    stats = [f"{c}.{s}" for c in metrics for s in ("mean", "std", "n")]
    counts = ["status", "n_seeds", "n_failed", "n_missing", "error"]
    table = pd.DataFrame(rows, columns=[*keys, *counts, *stats])
    table["label"] = _labels(table) if len(table) else pd.Series(dtype=str)
    return table[[*keys, "label", *counts, *stats]]


def comparison_table(
    frame: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    group: Sequence[str] = ("dataset", "arch", "target_sparsity"),
) -> pd.DataFrame:
    """Per cell (method × setting): ``<m>.mean``/``<m>.std``/``<m>.n`` over finished seeds of each metric.

    ``metrics`` defaults to every vocabulary metric column of the frame that has a value, plus ``delta_t``.
    Rows come in blocks of ``group`` (each must be a cell-identity column), sorted by the block keys, then
    by method label (published rows last). Columns: the cell keys, ``label``, ``status`` (done, partial,
    failed, published, or the unfinished status such as pending/missing), ``n_seeds``, ``n_failed``,
    ``n_missing``, ``error`` (first line of the first failed seed's error), then the statistics. Nothing is
    dropped: a cell without a finished seed keeps its row, with NaN statistics.
    """
    _require(frame, [*GROUP_KEYS, "status"], "comparison_table")
    keys = _cell_keys(frame)
    group = list(group)
    bad = [g for g in group if g not in keys]
    if bad:
        raise ValueError(f"group key(s) {bad} are not cell-identity columns; choose from {keys}")
    columns = _default_metrics(frame) if metrics is None else _check_metrics(frame, metrics)
    then = [k for k in ("tasks", "protocol") if k not in group]
    table = _sort(_cell_rows(frame, columns), group, then)
    table.attrs.update(
        kind=COMPARISON, metrics=columns, group=group, keys=keys, delta_axis=_delta_axis(frame)
    )
    return table


def _delta_axis(frame: pd.DataFrame) -> list[str]:
    """Method labels whose sparsity is of weight deltas (a multi-model method, ECS), not of the weights."""
    if "sparsity_axis" not in frame:
        return []
    return sorted(set(frame.loc[frame["sparsity_axis"] == "delta", "method"].astype(str)))


def _table2_columns(dataset: str, tasks: list[str], sources: list[pd.DataFrame]) -> list[str]:
    """AdapMTL's column order: per task its metrics then ΔT_t, then component sparsities, then ΔT."""
    vocabulary = METRICS.get(dataset)
    if vocabulary is None:
        raise KeyError(f"no metric vocabulary for dataset {dataset!r}; known: {', '.join(METRICS)}")
    wanted: list[str] = []
    for task in tasks:
        if task not in vocabulary:
            raise KeyError(f"task {task!r} is not in the {dataset!r} vocabulary ({', '.join(vocabulary)})")
        wanted += [f"{task}.{m}" for m in vocabulary[task]] + [f"delta_t.{task}"]
    wanted += ["sparsity.backbone", *(f"sparsity.head.{t}" for t in tasks), "achieved_sparsity"]
    present = [c for c in wanted if any(_has_values(s, c) for s in sources)]
    return [*present, "delta_t"]


def _matching(frame: pd.DataFrame, dataset: str, arch: str, target: float, tasks: str | None) -> pd.DataFrame:
    targets = pd.to_numeric(frame["target_sparsity"], errors="coerce").to_numpy(dtype=float)
    keep = (frame["dataset"] == dataset) & (frame["arch"] == arch) & np.isclose(targets, target, atol=1e-9)
    if tasks is not None:
        keep &= frame["tasks"] == tasks
    return frame[keep]


def _single_task_set(rows: pd.DataFrame, where: str) -> str | None:
    task_sets = sorted(set(rows["tasks"].dropna()))
    if len(task_sets) > 1:
        raise ValueError(f"{where} has several task sets {task_sets}; pass tasks=... to pick one")
    return task_sets[0] if task_sets else None


def _paper_rows(
    published: pd.DataFrame, dataset: str, arch: str, target: float, tasks: str | None
) -> pd.DataFrame:
    """Published rows of the setting, preceded by the dense row of each paper table they come from."""
    _require(published, [*GROUP_KEYS, "status", "run_id"], "table2_layout(published=...)")
    rows = _matching(published, dataset, arch, target, tasks)
    if rows.empty or "source" not in published:
        return rows
    tables = set(zip(rows["source"], rows["table"], strict=True))
    in_table = np.array(
        [(s, t) in tables for s, t in zip(published["source"], published["table"], strict=True)], dtype=bool
    )
    dense = published[
        in_table & (published["method"] == DENSE) & (published["tasks"] == rows["tasks"].iloc[0])
    ]
    return pd.concat([dense, rows]).drop_duplicates(subset="run_id")


def table2_layout(
    frame: pd.DataFrame,
    dataset: str,
    arch: str,
    target: float,
    published: pd.DataFrame | None = None,
    *,
    tasks: str | None = None,
) -> pd.DataFrame:
    """AdapMTL's Table 2 at one setting: one row per method, the mean over seeds of every column.

    Columns: ``label``, ``method``, ``protocol``, ``status``, ``n_seeds``, ``n_failed``, ``n_missing``,
    ``error``, then per task its metrics and ``delta_t.<task>``, then ``sparsity.backbone``,
    ``sparsity.head.<task>``, ``achieved_sparsity`` (overall prunable) and ``delta_t``; a column is left out
    when no row has a value for it (``delta_t`` is always there). Our rows are sorted by label. With
    ``published`` (from ``load_published``), its rows of the same dataset, arch, task set and target are
    appended in the paper's order as "<method> (published)", preceded by the dense row of their paper
    table. ``tasks`` (comma-joined) picks a task set when the setting has several.
    """
    _require(frame, [*GROUP_KEYS, "status"], "table2_layout")
    where = f"dataset {dataset!r}, arch {arch!r}, target {target}"
    ours = _matching(frame, dataset, arch, target, tasks)
    tasks = tasks or _single_task_set(ours, where)
    paper = pd.DataFrame()
    if published is not None:
        paper = _paper_rows(published, dataset, arch, target, tasks)
        tasks = tasks or _single_task_set(paper, f"the published rows of {where}")
    if tasks is None:
        raise ValueError(
            f"no row for {where} in the frame" + (" or the published rows" if published is not None else "")
        )
    columns = _table2_columns(dataset, tasks.split(","), [ours, paper])
    parts = []
    if not ours.empty:
        parts.append(_sort(_cell_rows(_with_columns(ours, columns), columns), []))
    if not paper.empty:
        parts.append(_cell_rows(_with_columns(paper, columns), columns))
    head = ["label", "method", "protocol", "status", "n_seeds", "n_failed", "n_missing", "error"]
    table = pd.concat(parts, ignore_index=True)
    out = table[head].copy()
    for column in columns:
        out[column] = table[f"{column}.mean"].astype(float)
    out.attrs.update(
        delta_axis=_delta_axis(ours),
        kind=TABLE2,
        metrics=columns,
        dataset=dataset,
        arch=arch,
        target=float(target),
        tasks=tasks,
    )
    return out


def _with_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The frame with every layout column (NaN where it has none: a paper that prints no sparsity)."""
    absent = {c: math.nan for c in columns if c not in frame}
    return frame.assign(**absent) if absent else frame


def _misses(achieved: float, target: float, tolerance: float = SPARSITY_MISS) -> bool:
    """Whether a mean achieved sparsity is more than ``tolerance`` from the target (fractions; a difference
    of exactly the tolerance, up to float rounding, is within it)."""
    return not (math.isnan(achieved) or math.isnan(target)) and abs(achieved - target) > tolerance + 1e-12


def sparsity_misses(frame: pd.DataFrame, tolerance: float = SPARSITY_MISS) -> pd.DataFrame:
    """Achieved against target sparsity: the cells whose mean achieved sparsity over their finished seeds
    differs from the target by more than ``tolerance`` (a fraction; default 0.1 pp).

    A method with a learned sparsity may accept any (AdapMTL's ``control: faithful``) or a looser tolerance
    than the runner's 0.1 pp; this lists where that happened. Our finished seeds only (``status`` done);
    rows whose sparsity is of weight deltas (``sparsity_axis`` delta, ECS: the runner checks each task's
    delta against the target) are left out. Columns: the cell keys, ``n_seeds``, ``achieved_mean``,
    ``achieved_min``, ``achieved_max`` (fractions) and ``difference`` (achieved_mean − target, in percentage
    points). Sorted by dataset, arch, target, tasks, protocol and method. Empty when every cell is within.
    """
    _require(frame, [*GROUP_KEYS, "status", "achieved_sparsity"], "sparsity_misses")
    keys = _cell_keys(frame)
    done = frame[frame["status"] == "done"]
    if "sparsity_axis" in done:
        done = done[done["sparsity_axis"].fillna("prunable") != "delta"]
    rows = []
    for key, cell in done.groupby(keys, sort=False, dropna=False):
        values = pd.to_numeric(cell["achieved_sparsity"], errors="coerce").astype(float).dropna()
        record = dict(zip(keys, key, strict=True))
        target = _float(record["target_sparsity"])
        if values.empty or not _misses(float(values.mean()), target, tolerance):
            continue
        mean = float(values.mean())
        record.update(
            n_seeds=len(values),
            achieved_mean=mean,
            achieved_min=float(values.min()),
            achieved_max=float(values.max()),
            difference=100.0 * (mean - target),
        )
        rows.append(record)
    stats = ["n_seeds", "achieved_mean", "achieved_min", "achieved_max", "difference"]
    table = pd.DataFrame(rows, columns=[*keys, *stats])
    order = ["dataset", "arch", "target_sparsity", "tasks", "protocol", "method"]
    table = table.sort_values(order, kind="stable").reset_index(drop=True)
    table.attrs.update(kind="sparsity_misses", tolerance=float(tolerance))
    return table


# -------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Style:
    """What differs between Markdown and LaTeX output."""

    latex: bool

    def escape(self, text: str) -> str:
        if not self.latex:
            return text.replace("|", r"\|")
        return latex_escape(text)

    def number(self, value: float, digits: int) -> str:
        text = f"{value:.{digits}f}"
        if text.startswith("-") and float(text) == 0.0:
            text = text[1:]  # no "-0.00"
        if self.latex and text.startswith("-"):
            text = "$-$" + text[1:]
        return text

    @property
    def pm(self) -> str:
        return r"$\pm$" if self.latex else "±"

    def arrow(self, sign: int) -> str:
        if self.latex:
            return r"$\uparrow$" if sign == HIGHER else r"$\downarrow$"
        return "↑" if sign == HIGHER else "↓"

    def bold(self, text: str) -> str:
        return rf"\textbf{{{text}}}" if self.latex else f"**{text}**"

    def underline(self, text: str) -> str:
        return rf"\underline{{{text}}}" if self.latex else f"<u>{text}</u>"

    @property
    def missing(self) -> str:
        return "---" if self.latex else "—"

    @property
    def unavailable(self) -> str:
        return "--" if self.latex else "–"


MARKDOWN = _Style(latex=False)
LATEX = _Style(latex=True)


def _direction(column: str) -> int | None:
    """+1/−1 for metrics and ΔT/Δm (higher is better), None for columns without one (sparsity, costs)."""
    return column_name(column).direction


def _header(column: str, style: _Style, dataset: str | None) -> str:
    """Short column header with its direction arrow (units go into the caption)."""
    return column_label(column, dataset, unit=False, latex=style.latex)


def _percent(value: float) -> str:
    return f"{100.0 * value:g}%"


def _key_text(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "target_sparsity":
        return _percent(float(value))
    if column in ("width", "head_width"):
        return f"{float(value):g}"
    if column == "tasks":
        return str(value).replace(",", ", ")
    if column == "dataset":
        return dataset_title(str(value))
    if column == "arch":
        return arch_title(str(value))
    return str(value)


@dataclass
class _Row:
    keys: list[str]  # display text of the key columns (unescaped)
    label: str
    status: str
    n_seeds: int
    planned: int
    n_failed: int
    error: str | None
    means: list[float]
    stds: list[float]
    block: Hashable | None  # rows of one block compete for bold/underline; None: never highlighted
    section: Hashable  # LaTeX draws a rule between sections
    target: float = math.nan  # the row's target sparsity (for the caption's note on missed targets)
    method: str = ""


@dataclass
class _Layout:
    kind: str
    key_columns: list[str]
    metrics: list[str]
    rows: list[_Row]
    with_std: bool
    setting: list[tuple[str, str]]  # constant keys (column, display text) for the caption
    protocols: list[str]
    datasets: list[str]
    digits: dict[str, int] = field(default_factory=dict)
    delta_axis: list[str] = field(default_factory=list)  # methods whose sparsity is of weight deltas

    @property
    def dataset(self) -> str | None:
        """The one dataset of the table (its units and names apply), None when it has several."""
        return self.datasets[0] if len(self.datasets) == 1 else None

    def scale(self, column: str) -> float:
        return column_name(column, self.dataset).scale


def _varying(table: pd.DataFrame, column: str) -> bool:
    return column in table and table[column].dropna().nunique() > 1


def _constant(table: pd.DataFrame, column: str) -> Any:
    values = table[column].dropna().unique() if column in table else []
    return values[0] if len(values) == 1 else None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _comparison_layout(table: pd.DataFrame) -> _Layout:
    attrs = table.attrs
    metrics = list(attrs.get("metrics") or [c[: -len(".mean")] for c in table.columns if c.endswith(".mean")])
    keys = list(attrs.get("keys") or [c for c in [*GROUP_KEYS, *OPTIONAL_KEYS] if c in table])
    group = list(attrs.get("group", [k for k in ("dataset", "arch", "target_sparsity") if k in table]))
    shown = [k for k in keys if k not in LABEL_KEYS and _varying(table, k)]
    shown = [k for k in group if k in shown] + [k for k in shown if k not in group]
    block_keys = group + [k for k in ("tasks", "protocol") if k not in group and k in table]
    setting = [
        (k, _key_text(k, _constant(table, k)))
        for k in ("dataset", "tasks", "arch", "width", "head_width", "target_sparsity")
        if k in table and not _varying(table, k) and _constant(table, k) is not None
    ]
    rows = []
    for record in table.to_dict("records"):
        block = tuple(str(record.get(k)) for k in block_keys)
        rows.append(
            _row_of(
                record,
                shown,
                means=[_float(record.get(f"{m}.mean")) for m in metrics],
                stds=[_float(record.get(f"{m}.std")) for m in metrics],
                block=None if record.get("method") == DENSE else block,
                section=tuple(_key_text(k, record[k]) for k in shown),
                target=_float(record.get("target_sparsity")),
            )
        )
    return _Layout(
        kind=COMPARISON,
        key_columns=shown,
        metrics=metrics,
        rows=rows,
        with_std=True,
        setting=setting,
        protocols=sorted(set(table["protocol"].dropna().astype(str))) if "protocol" in table else [],
        datasets=sorted(set(table["dataset"].dropna().astype(str))) if "dataset" in table else [],
    )


def _row_of(
    record: dict[str, Any],
    shown: list[str],
    means: list[float],
    stds: list[float],
    block: Any,
    section: Any,
    target: float = math.nan,
) -> _Row:
    """A table row from one record of comparison_table/table2_layout: its keys, label, status and counts."""
    return _Row(
        keys=[_key_text(k, record[k]) for k in shown],
        label=str(record["label"]),
        status=str(record["status"]),
        n_seeds=int(record["n_seeds"]),
        planned=int(record["n_seeds"] + record["n_failed"] + record["n_missing"]),
        n_failed=int(record["n_failed"]),
        error=record.get("error") if isinstance(record.get("error"), str) else None,
        means=means,
        stds=stds,
        block=block,
        section=section,
        target=target,
        method=str(record.get("method", record["label"])),
    )


def _table2_layout_of(table: pd.DataFrame) -> _Layout:
    attrs = table.attrs
    head = {"label", "method", "protocol", "status", "n_seeds", "n_failed", "n_missing", "error"}
    metrics = list(attrs.get("metrics") or [c for c in table.columns if c not in head])
    shown = ["protocol"] if _varying(table, "protocol") else []
    setting = [(k, _key_text(k, attrs[a])) for k, a in _TABLE2_SETTING if a in attrs]
    rows = []
    for record in table.to_dict("records"):
        published = record["status"] == PUBLISHED
        rows.append(
            _row_of(
                record,
                shown,
                means=[_float(record.get(m)) for m in metrics],
                stds=[math.nan] * len(metrics),
                block=None if record["method"] == DENSE else str(record["protocol"]),
                section=published,
                target=_float(attrs.get("target")),
            )
        )
    return _Layout(
        kind=TABLE2,
        key_columns=shown,
        metrics=metrics,
        rows=rows,
        with_std=False,
        setting=setting,
        protocols=sorted(set(table["protocol"].dropna().astype(str))),
        datasets=[str(attrs["dataset"])] if "dataset" in attrs else [],
    )


_TABLE2_SETTING: tuple[tuple[str, str], ...] = (
    ("dataset", "dataset"),
    ("tasks", "tasks"),
    ("arch", "arch"),
    ("target_sparsity", "target"),
)


def _layout(table: pd.DataFrame, digits: Mapping[str, int] | None) -> _Layout:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a DataFrame from comparison_table or table2_layout, got {type(table)}")
    kind = table.attrs.get("kind")
    if kind is None:  # attrs lost on the way (e.g. a round trip through a file): recognise the shape
        kind = COMPARISON if any(c.endswith(".mean") for c in table.columns) else TABLE2
    needed = ["label", "status", "n_seeds", "n_failed", "n_missing"]
    if kind == TABLE2:
        needed += ["method", "protocol"]
    missing = [c for c in needed if c not in table]
    if missing:
        raise KeyError(
            f"not a {kind} table: columns {missing} are missing "
            "(build it with comparison_table() or table2_layout())"
        )
    layout = _comparison_layout(table) if kind == COMPARISON else _table2_layout_of(table)
    layout.digits = {**DIGITS, **(digits or {})}
    layout.delta_axis = list(table.attrs.get("delta_axis", []))
    return layout


def _highlights(layout: _Layout) -> list[list[str | None]]:
    """Per row and metric: "best", "second" or None, compared on the displayed (rounded) values."""
    marks: list[list[str | None]] = [[None] * len(layout.metrics) for _ in layout.rows]
    for j, column in enumerate(layout.metrics):
        sign = _direction(column)
        if sign is None:
            continue
        digits, scale = layout.digits.get(column, 2), layout.scale(column)
        shown: dict[Hashable, list[tuple[int, float]]] = {}
        for i, row in enumerate(layout.rows):
            value = row.means[j]
            if row.block is None or row.n_seeds == 0 or math.isnan(value):
                continue
            shown.setdefault(row.block, []).append((i, round(value * scale, digits)))
        for entries in shown.values():
            distinct = sorted({v for _, v in entries}, reverse=sign == HIGHER)
            if len(distinct) < 2:
                continue
            for i, v in entries:
                if v == distinct[0]:
                    marks[i][j] = "best"
                elif len(distinct) >= 3 and v == distinct[1]:
                    marks[i][j] = "second"
    return marks


def _cells(layout: _Layout, style: _Style) -> list[list[str]]:
    """The formatted metric cells of every row."""
    marks = _highlights(layout)
    out = []
    for row, row_marks in zip(layout.rows, marks, strict=True):
        cells = []
        for j, column in enumerate(layout.metrics):
            if row.n_seeds == 0:
                cells.append("failed" if row.status == FAILED else style.missing)
                continue
            mean, std = row.means[j], row.stds[j]
            if math.isnan(mean):
                cells.append(style.unavailable)
                continue
            digits, scale = layout.digits.get(column, 2), layout.scale(column)
            text = style.number(mean * scale, digits)
            if layout.with_std and not math.isnan(std):
                text = f"{text} {style.pm} {style.number(std * scale, digits)}"
            if row_marks[j] == "best":
                text = style.bold(text)
            elif row_marks[j] == "second":
                text = style.underline(text)
            cells.append(text)
        out.append(cells)
    return out


def _label_text(row: _Row, style: _Style) -> str:
    text = style.escape(row.label)
    if row.status == PARTIAL:
        text += f" (n={row.n_seeds} of {row.planned})"
    return text


def _note(row: _Row) -> str | None:
    """The Markdown note of a row with a failed seed: where, and the first line of its error."""
    if row.n_failed == 0:
        return None
    where = ", ".join([row.label, *(k for k in row.keys if k)])
    error = row.error or "no error message recorded"
    if row.status == FAILED:
        return f"{where}: failed: {error}"
    return f"{where}: {row.n_failed} of {row.planned} seeds failed: {error}"


# ------------------------------------------------------------------------------------------------ caption


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def _short_caption(layout: _Layout, caption: str | None, style: _Style) -> str:
    """The caller's caption (plain text, escaped here), else one naming the table and its setting."""
    if caption:
        return style.escape(_sentence(caption))
    what = "Every metric per method (layout of AdapMTL's Table 2)" if layout.kind == TABLE2 else "Comparison"
    setting = [v for k, v in layout.setting if k in ("dataset", "arch")]
    setting += [f"target {v}" for k, v in layout.setting if k == "target_sparsity"]
    return style.escape(_sentence(what + (": " + ", ".join(setting) if setting else "")))


def _units_text(layout: _Layout, style: _Style) -> str | None:
    """ "Units: Seg mIoU, PixAcc, sparsities in %; Normal Mean, Median in °; Depth Abs err in m." (ΔT has its
    own sentence.)"""
    by_unit: dict[str, list[str]] = {}
    for column in layout.metrics:
        name = column_name(column, layout.dataset)
        if not name.unit or column.startswith("delta_"):
            continue
        shown = "sparsities" if column == "achieved_sparsity" or column.startswith("sparsity.") else name.text
        if shown not in by_unit.setdefault(name.unit, []):
            by_unit[name.unit].append(shown)
    if not by_unit:
        return None
    groups = [f"{', '.join(names)} in {unit}" for unit, names in by_unit.items()]
    return style.escape("Units: " + "; ".join(groups) + ".")


def _caption(layout: _Layout, caption: str | None, style: _Style, legend: bool = True) -> tuple[str, str]:
    """(short caption, legend): the caption's first sentence, then setting, protocol(s), seeds, units,
    highlighting, ΔT and the cell legend; the legend is empty when ``legend`` is False."""
    short = _short_caption(layout, caption, style)
    empty = not any(r.n_seeds > 0 for r in layout.rows if r.status != PUBLISHED)
    if empty:
        plain = _short_caption(layout, caption, MARKDOWN)
        warnings.warn(f"table {plain!r} has no finished cell: no values", EmptyTableWarning, stacklevel=4)
    if not legend:
        return (f"{short} {NO_VALUES}" if empty else short), ""
    esc = style.escape
    parts = [NO_VALUES] if empty else []
    if layout.kind == TABLE2 and caption:
        parts.append("Layout of AdapMTL's Table 2, one row per method.")
    if layout.setting:
        names = {"head_width": "head width", "target_sparsity": "target sparsity"}
        items = [f"{names.get(k, k)} {esc(v)}" for k, v in layout.setting]
        parts.append("Setting: " + "; ".join(items) + ".")
    if len(layout.protocols) == 1:
        parts.append(f"Evaluation protocol: {esc(layout.protocols[0])}.")
    elif layout.protocols:
        listed = ", ".join(esc(p) for p in layout.protocols)
        parts.append(f"Evaluation protocols: {listed} (compare rows of the same protocol only).")
    ours = [r for r in layout.rows if r.status != PUBLISHED]
    seeds = sorted({r.planned for r in ours if r.n_seeds > 0})  # planned: a partial cell is said apart
    if seeds:
        dash = "--" if style.latex else "–"
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}{dash}{seeds[-1]}"
        plural = "seed" if seeds == [1] else "seeds"
        if layout.with_std and seeds != [1]:
            parts.append(f"Mean {style.pm} sample std (ddof 1) over {count} {plural} per cell.")
        else:
            parts.append(f"Mean over {count} {plural} per cell.")
    if any(r.status == PARTIAL for r in ours):
        parts.append("n=k of N: only k of the N planned seeds finished.")
    if any(r.status == PUBLISHED for r in layout.rows):
        parts.append(
            "Rows marked (published): as printed in the paper; their ΔT as printed, else computed against "
            "the paper's dense row.".replace("ΔT", r"$\Delta_T$" if style.latex else "ΔT")
        )
    has_sparsity = any(c == "achieved_sparsity" or c.startswith("sparsity.") for c in layout.metrics)
    if layout.delta_axis and has_sparsity:
        methods = ", ".join(esc(m) for m in layout.delta_axis)
        parts.append(
            f"{methods}: a base model plus sparse per-task weight deltas; their sparsity is that of the "
            "deltas (its own axis, not a pruning sparsity): compare them on stored parameters and FLOPs."
        )
    units = _units_text(layout, style)
    if units:
        parts.append(units)
    if has_sparsity:
        parts.append(
            "Sparsity: share of zero weights among the prunable weights (overall, of the backbone, of a "
            "head), counted in the weights."
        )
    missed = _misses_text(layout, style)
    if missed:
        parts.append(missed)
    if any(_direction(c) is not None for c in layout.metrics):
        scope = (
            "among rows of the same protocol (dense excluded)"
            if layout.kind == TABLE2
            else "among rows of the same setting and protocol"
        )
        parts.append(
            f"{style.arrow(HIGHER)}/{style.arrow(-HIGHER)}: higher/lower is better; the best value of a "
            f"column {scope} in bold, the second best underlined (compared as displayed)."
        )
    if any(c == "delta_t" or c.startswith("delta_t.") for c in layout.metrics):
        parts.append(_delta_t_text(layout, style))
    if "delta_m" in layout.metrics:
        dm = r"$\Delta_m$" if style.latex else "Δm"
        parts.append(f"{dm} (Maninis et al.): the same with a mean instead of a sum over a task's metrics.")
    cells = []
    if any(r.status == FAILED for r in layout.rows):
        cells.append("failed: no seed finished" + ("" if style.latex else " (first error line in the notes)"))
    if any(r.n_seeds == 0 and r.status != FAILED for r in layout.rows):
        cells.append(f"{style.missing}: not run yet")
    if any(r.n_seeds > 0 and any(math.isnan(m) for m in r.means) for r in layout.rows):
        cells.append(f"{style.unavailable}: not available")
    if cells:
        parts.append(_sentence("; ".join(cells)))
    return short, " ".join(parts)


def _missed_rows(layout: _Layout) -> list[tuple[_Row, float]]:
    """Our rows (finished seeds, not published, not dense, not on the delta axis) whose mean achieved
    sparsity misses their target by more than 0.1 pp, with that mean; none when the table does not show
    the achieved sparsity."""
    if "achieved_sparsity" not in layout.metrics:
        return []
    j = layout.metrics.index("achieved_sparsity")
    skip = set(layout.delta_axis) | {DENSE}
    return [
        (row, row.means[j])
        for row in layout.rows
        if row.status != PUBLISHED and row.n_seeds > 0 and row.method not in skip
        if _misses(row.means[j], row.target)
    ]


def _misses_text(layout: _Layout, style: _Style) -> str | None:
    """ "Achieved sparsity misses the target by more than 0.1 pp in 1 row: adapmtl at 90%: 91.72% (+1.72
    pp)." (the first few named; the report's table of achieved against target sparsity lists them all)."""
    missed = _missed_rows(layout)
    if not missed:
        return None
    percent = r"\%" if style.latex else "%"
    items = []
    for row, achieved in missed[:MISSES_NAMED]:
        difference = 100.0 * (achieved - row.target)
        sign = "+" if difference > 0 else ""
        items.append(
            f"{style.escape(row.label)} at {style.escape(_percent(row.target))}: "
            f"{style.number(100.0 * achieved, 2)}{percent} ({sign}{style.number(difference, 2)} pp)"
        )
    if len(missed) > MISSES_NAMED:
        items.append(f"{len(missed) - MISSES_NAMED} more")
    rows = "row" if len(missed) == 1 else "rows"
    return (
        f"Achieved sparsity (mean over seeds) misses the target by more than 0.1 pp in {len(missed)} {rows}: "
        + "; ".join(items)
        + "."
    )


def _delta_t_text(layout: _Layout, style: _Style) -> str:
    """ΔT exactly as mtlprune.analysis.delta.delta_t computes it (sum over a task's metrics, mean over
    tasks)."""
    if style.latex:
        text = (
            r"$\Delta_T$ (AdapMTL): per task $t$, $\Delta_T^t = 100 \sum_i s_i (M_i - M_i^{\mathrm{dense}})"
            r" / M_i^{\mathrm{dense}}$, a sum over the task's $\Delta_T$ metrics $i$ with $s_i = +1$ if "
            r"higher is better and $-1$ if lower is better; $\Delta_T$ is the mean of $\Delta_T^t$ over the "
            r"tasks"
        )
    else:
        text = (
            "ΔT (AdapMTL): per task t, ΔT_t = 100 · Σ_i s_i (M_i − M_i^dense) / M_i^dense, a sum over the "
            "task's ΔT metrics i with s_i = +1 if higher is better and −1 if lower is better; ΔT is the mean "
            "of ΔT_t over the tasks"
        )
    text += (
        "; the dense model has the same dataset, tasks, architecture, training, seed and protocol; "
        "positive is better than dense."
    )
    sets = []
    for dataset in layout.datasets:
        chosen = DELTA_METRICS.get(dataset)
        if chosen is None:
            continue
        title = style.escape(dataset_title(dataset))
        if all(tuple(METRICS[dataset][t]) == ms for t, ms in chosen.items()):
            sets.append(f"{title}: every metric of the task")
        else:
            columns = ", ".join(
                column_label(f"{t}.{m}", dataset, unit=False, arrow=False, latex=style.latex)
                for t, ms in chosen.items()
                for m in ms
            )
            sets.append(f"{title}: {columns}")
    if sets:
        delta = r"$\Delta_T$" if style.latex else "ΔT"
        text += f" {delta} metrics: " + "; ".join(sets) + "."
    return text


# ------------------------------------------------------------------------------------------- assembling


def to_markdown(
    table: pd.DataFrame,
    caption: str | None = None,
    *,
    legend: bool = True,
    digits: Mapping[str, int] | None = None,
) -> str:
    """A comparison or Table-2 frame as a Markdown (GFM) table: "Table: caption", the table, notes.

    ``caption``: the short caption (default: one naming the table and its setting); ``legend``: append the
    generated legend (setting, protocol, seeds, units, highlighting, ΔT, cell marks). Failed cells carry a
    footnote with the first line of the error. ``digits`` overrides the decimals of some columns (defaults:
    2, more for small error metrics, see ``DIGITS``).
    """
    layout = _layout(table, digits)
    style = MARKDOWN
    headers = [KEY_HEADERS.get(k, k) for k in layout.key_columns] + ["Method"]
    headers += [_header(c, style, layout.dataset) for c in layout.metrics]
    align = [":---"] * (len(layout.key_columns) + 1) + ["---:"] * len(layout.metrics)
    short, text = _caption(layout, caption, style, legend)
    title = f"{short} {text}" if text else short
    lines = [f"Table: {title}", "", _md_row(headers), _md_row(align)]
    notes = []
    for row, cells in zip(layout.rows, _cells(layout, style), strict=True):
        label = _label_text(row, style)
        note = _note(row)
        if note is not None:
            notes.append(f"[^{len(notes) + 1}]: {note}")
            label += f"[^{len(notes)}]"
        lines.append(_md_row([style.escape(k) for k in row.keys] + [label] + cells))
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _latex_header(layout: _Layout) -> list[str]:
    """The header rows: columns of one group (a task's metrics and its ΔT, the sparsities) share a
    ``\\multicolumn`` label with a ``\\cmidrule`` under it and show their short names below (``Seg`` over
    ``mIoU``, as the papers' tables do); without two neighbours in one group, one row of full names."""
    names = [column_name(c, layout.dataset) for c in layout.metrics]
    runs: list[tuple[str | None, int]] = []  # (group, length) of consecutive columns
    for name in names:
        if runs and name.group is not None and runs[-1][0] == name.group:
            runs[-1] = (name.group, runs[-1][1] + 1)
        else:
            runs.append((name.group, 1))
    keys = [KEY_HEADERS.get(k, k) for k in layout.key_columns] + ["Method"]
    if all(n < 2 for _, n in runs):
        return [" & ".join(keys + [_header(c, LATEX, layout.dataset) for c in layout.metrics]) + r" \\"]
    top, rules, bottom, start = [""] * len(keys), [], list(keys), len(keys) + 1
    index = 0
    for group, n in runs:
        grouped = group is not None and n >= 2
        if grouped:
            top.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(group)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        else:
            top += [""] * n
        for name, column in zip(names[index : index + n], layout.metrics[index : index + n], strict=True):
            text = name.short_latex if grouped else name.latex
            arrow = "" if name.direction is None else " " + LATEX.arrow(name.direction)
            bottom.append(text + arrow if grouped else _header(column, LATEX, layout.dataset))
        index += n
        start += n
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join(bottom) + r" \\"]


def to_latex(
    table: pd.DataFrame,
    caption: str | None = None,
    label: str | None = None,
    *,
    legend: bool = True,
    env: str = "table",
    resize: bool = True,
    digits: Mapping[str, int] | None = None,
) -> str:
    """A comparison or Table-2 frame as a LaTeX float with a booktabs ``tabular``.

    Needs ``\\usepackage{booktabs}`` and, with ``resize``, ``graphicx``. ``caption`` is plain text (escaped
    like every value from the frame): the short caption, by default one naming the table and its setting;
    ``legend`` appends the generated legend (``\\caption[short]{short legend}``). ``env="table*"`` spans both
    columns of a two-column paper; ``resize`` shrinks a table wider than the line to fit it. Key columns are
    printed once per run of equal values, and a ``\\midrule`` separates blocks (our rows from published ones
    in Table 2).
    """
    layout = _layout(table, digits)
    style = LATEX
    spec = "l" * (len(layout.key_columns) + 1) + "r" * len(layout.metrics)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *_latex_header(layout), r"\midrule"]
    previous: _Row | None = None
    for row, cells in zip(layout.rows, _cells(layout, style), strict=True):
        same = previous is not None and previous.section == row.section
        if previous is not None and not same:
            lines.append(r"\midrule")
        keys = [
            "" if same and previous is not None and previous.keys[i] == k else style.escape(k)
            for i, k in enumerate(row.keys)
        ]
        lines.append(" & ".join([*keys, _label_text(row, style), *cells]) + r" \\")
        previous = row
    lines += [r"\bottomrule", r"\end{tabular}"]
    short, text = _caption(layout, caption, style, legend)
    return latex_table(lines, short, text, label, env=env, resize=resize)


def table2_markdown(table: pd.DataFrame, caption: str | None = None, **kwargs: Any) -> str:
    """`to_markdown` of a `table2_layout` frame (named for callers that want to say which table)."""
    return to_markdown(table, caption, **kwargs)


def table2_latex(
    table: pd.DataFrame,
    caption: str | None = None,
    label: str | None = None,
    *,
    env: str = "table*",
    **kwargs: Any,
) -> str:
    """`to_latex` of a `table2_layout` frame; across both columns by default (it has 20+ columns)."""
    return to_latex(table, caption, label, env=env, **kwargs)


# ------------------------------------------------------------------------- achieved against target sparsity

MISSES_HEADERS = ("Setting", "Method", "Target", "Achieved", "Seed range", "Difference (pp)", "Seeds")


def _misses_cells(table: pd.DataFrame, style: _Style) -> list[list[str]]:
    """The display cells of a sparsity_misses frame (sparsities in %, the difference in pp)."""
    _require(table, ["method", "target_sparsity", "achieved_mean", "difference", "n_seeds"], "rendering")
    several_sets = "tasks" in table and table["tasks"].nunique() > 1
    several_protocols = "protocol" in table and table["protocol"].nunique() > 1
    percent = r"\%" if style.latex else "%"
    out = []
    for record in table.to_dict("records"):
        setting = setting_title(record.get("dataset"), record.get("arch"))
        if several_sets:
            setting += f" · {len(str(record['tasks']).split(','))} tasks"
        if several_protocols:
            setting += f" · {record['protocol']}"
        low, high = record.get("achieved_min", math.nan), record.get("achieved_max", math.nan)
        span = (
            f"{style.number(100.0 * low, 2)}{style.unavailable}{style.number(100.0 * high, 2)}"
            if int(record["n_seeds"]) > 1 and not (math.isnan(low) or math.isnan(high))
            else style.unavailable
        )
        difference = float(record["difference"])
        sign = "+" if difference > 0 else ""
        out.append(
            [
                style.escape(setting),
                style.escape(str(record["method"])),
                style.escape(_percent(float(record["target_sparsity"]))),
                f"{style.number(100.0 * float(record['achieved_mean']), 2)}{percent}",
                span,
                f"{sign}{style.number(difference, 2)}",
                str(int(record["n_seeds"])),
            ]
        )
    return out


def _misses_caption(table: pd.DataFrame, caption: str | None, style: _Style) -> tuple[str, str]:
    tolerance = 100.0 * float(table.attrs.get("tolerance", SPARSITY_MISS))
    short = style.escape(
        _sentence(caption or f"Cells whose achieved sparsity misses the target by more than {tolerance:g} pp")
    )
    legend = (
        "Achieved: the share of zero weights among the prunable weights, counted in the weights, mean over "
        "the finished seeds (seed range: lowest to highest); difference: achieved minus target, in "
        "percentage points. Methods with a learned sparsity may end away from the target (AdapMTL's "
        "control faithful accepts any sparsity); rows whose sparsity is of weight deltas (ECS) are checked "
        "per task by the runner and not listed."
    )
    if table.empty:
        legend = "Every finished cell is within the tolerance of its target. " + legend
    return short, style.escape(legend)


def sparsity_misses_markdown(table: pd.DataFrame, caption: str | None = None) -> str:
    """A :func:`sparsity_misses` frame as a Markdown table ("Table: caption", header, one row per cell)."""
    style = MARKDOWN
    short, legend = _misses_caption(table, caption, style)
    lines = [f"Table: {short} {legend}", "", _md_row(list(MISSES_HEADERS))]
    lines.append(_md_row([":---", ":---"] + ["---:"] * (len(MISSES_HEADERS) - 2)))
    lines += [_md_row(cells) for cells in _misses_cells(table, style)]
    return "\n".join(lines) + "\n"


def sparsity_misses_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A :func:`sparsity_misses` frame as a LaTeX float with a booktabs ``tabular``."""
    style = LATEX
    header = [latex_escape(h) for h in MISSES_HEADERS]
    lines = [r"\begin{tabular}{ll" + "r" * (len(MISSES_HEADERS) - 2) + "}", r"\toprule"]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in _misses_cells(table, style)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    short, legend = _misses_caption(table, caption, style)
    return latex_table(lines, short, legend, label)
