"""`load_published()`: the papers' reference numbers (results/published/*.csv) as load_results-shaped rows.

The CSVs are tidy transcriptions, one printed cell per line, values exactly as printed (percent, degrees,
…) so that transcription can be checked against the paper by eye. This module is the one place that
converts them to our units, validates them loudly (a silently mistyped reference number would skew every
comparison made against it) and widens them into the same column shape as :func:`load_results`, so a
published row can be concatenated with, plotted beside and aggregated like a stored cell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from mtlprune.analysis.delta import delta_m, delta_t
from mtlprune.analysis.load import BASE_COLUMNS
from mtlprune.vocabulary import DIRECTIONS, METRICS, TASKS

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ROOT",
    "EXTRA_COLUMNS",
    "REAL_SPARSITY",
    "load_published",
    "plotted_sparsity",
]

CSV_COLUMNS: list[str] = [
    "source",
    "table",
    "dataset",
    "tasks",
    "arch",
    "method",
    "paper_label",
    "starts_from",
    "target_sparsity",
    "real_sparsity",
    "metric",
    "value",
    "protocol",
]
# Identity of one published row (one wide output row); every CSV line of a row must agree on the rest.
ROW_KEY: tuple[str, ...] = ("source", "table", "dataset", "tasks", "arch", "method", "starts_from")
# Columns that must be constant within a row besides its key.
ROW_CONSTANT: tuple[str, ...] = ("paper_label", "target_sparsity", "real_sparsity", "protocol")
# The sparsity the paper's own code actually reaches for a nominal target (a fraction; empty: not known).
REAL_SPARSITY = "real_sparsity"
# Columns that may be left empty.
OPTIONAL_COLUMNS: frozenset[str] = frozenset({REAL_SPARSITY})
EXTRA_COLUMNS: list[str] = ["source", "table", "paper_label", "starts_from", REAL_SPARSITY]
STARTS_FROM: frozenset[str] = frozenset({"init", "dense", "-"})
# Printed in percent, stored by us as fractions.
PERCENT_TO_FRACTION: frozenset[str] = frozenset({"segment_semantic.miou", "segment_semantic.pixel_acc"})
# The overall sparsity, where a paper prints one, becomes `achieved_sparsity` (a BASE column).
OVERALL_SPARSITY = "sparsity.overall"
DENSE_METHOD = "dense"
# results/published of this checkout: bench/analysis/published.py → repository root.
DEFAULT_ROOT: Path = Path(str(resources.files("mtlprune.published")))  # results/published/ in the repository


class _Line:
    """One validated CSV line, remembered with its place so later checks can still name file and line."""

    __slots__ = ("fields", "line", "path", "value")

    def __init__(self, path: Path, line: int, fields: dict[str, str], value: float) -> None:
        self.path, self.line, self.fields, self.value = path, line, fields, value

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _fail(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}:{line}: {problem}")


def _metric_problem(metric: str, dataset: str, tasks: list[str]) -> str | None:
    """Why `metric` is not a known column for this row (None when it is)."""
    if metric in ("delta_t", OVERALL_SPARSITY):
        return None
    if metric.startswith("delta_t."):
        task = metric.removeprefix("delta_t.")
        return None if task in tasks else f"metric {metric!r} names task {task!r}, not one of {tasks}"
    if metric.startswith("sparsity."):
        rest = metric.removeprefix("sparsity.")
        for prefix in ("head.", "path."):
            if rest.startswith(prefix):
                task = rest.removeprefix(prefix)
                return None if task in tasks else f"metric {metric!r} names task {task!r}, not one of {tasks}"
        if rest in ("backbone", "all_params"):
            return None
        return (
            f"unknown sparsity column {metric!r} (known: sparsity.overall, sparsity.backbone, "
            "sparsity.all_params, sparsity.head.<task>, sparsity.path.<task>)"
        )
    if metric not in DIRECTIONS:
        return f"unknown metric column {metric!r} (not in vocabulary.DIRECTIONS, delta_t* or sparsity.*)"
    task, name = metric.split(".", 1)
    if task not in tasks:
        return f"metric {metric!r} belongs to task {task!r}, which is not in the row's tasks {tasks}"
    if name not in METRICS[dataset].get(task, {}):
        return f"metric {metric!r} is not in the {dataset!r} vocabulary of task {task!r}"
    return None


def _real_sparsity_problem(text: str, target: float) -> str | None:
    """Why a ``real_sparsity`` cell is invalid (None when it is empty or a fraction fitting the row)."""
    if not text:
        return None
    try:
        real = float(text)
    except ValueError:
        return f"non-numeric value {text!r} (a fraction such as 0.921, or empty when unknown)"
    if not 0.0 <= real < 1.0:
        return f"{text!r} is not a fraction in [0, 1) (write 0.921 for 92.1%)"
    if target == 0.0 and real != 0.0:
        return f"{text!r} on a dense row (target_sparsity 0)"
    return None


def _read_file(path: Path) -> list[_Line]:
    """Parse and validate one CSV line by line; every error names the file and the 1-based line."""
    lines: list[_Line] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise _fail(path, 1, "empty file, expected a header row")
        missing = [c for c in CSV_COLUMNS if c not in header]
        extra = [c for c in header if c not in CSV_COLUMNS]
        if missing or extra:
            raise _fail(path, 1, f"header has missing columns {missing} and extra columns {extra}")
        if header != CSV_COLUMNS:
            raise _fail(path, 1, f"header columns {header} are not in the order {CSV_COLUMNS}")
        seen: dict[tuple[str, ...], int] = {}
        for record in reader:
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(CSV_COLUMNS):
                raise _fail(path, line, f"{len(record)} fields, expected {len(CSV_COLUMNS)}")
            fields = dict(zip(CSV_COLUMNS, (cell.strip() for cell in record), strict=True))
            empty = [c for c, v in fields.items() if not v and c not in OPTIONAL_COLUMNS]
            if empty:
                raise _fail(path, line, f"empty field(s) {empty}")
            if fields["dataset"] not in METRICS:
                raise _fail(path, line, f"unknown dataset {fields['dataset']!r}; known: {sorted(METRICS)}")
            tasks = fields["tasks"].split(",")
            unknown = [t for t in tasks if t not in TASKS]
            if unknown or len(set(tasks)) != len(tasks):
                raise _fail(path, line, f"tasks {fields['tasks']!r} has unknown or repeated task names")
            if fields["starts_from"] not in STARTS_FROM:
                raise _fail(
                    path, line, f"starts_from {fields['starts_from']!r} is not one of {sorted(STARTS_FROM)}"
                )
            try:
                target = float(fields["target_sparsity"])
            except ValueError:
                raise _fail(
                    path, line, f"non-numeric target_sparsity {fields['target_sparsity']!r}"
                ) from None
            if not 0.0 <= target < 1.0:
                raise _fail(path, line, f"target_sparsity {target} is not a fraction in [0, 1)")
            problem = _real_sparsity_problem(fields[REAL_SPARSITY], target)
            if problem is not None:
                row = f"{fields['method']} ({fields['starts_from']})"
                raise _fail(path, line, f"row {row}, column {REAL_SPARSITY}: {problem}")
            problem = _metric_problem(fields["metric"], fields["dataset"], tasks)
            if problem is not None:
                raise _fail(path, line, problem)
            try:
                value = float(fields["value"])
            except ValueError:
                raise _fail(
                    path, line, f"non-numeric value {fields['value']!r} of {fields['metric']}"
                ) from None
            if not math.isfinite(value):
                raise _fail(path, line, f"non-finite value {fields['value']!r} of {fields['metric']}")
            key = tuple(fields[c] for c in ("source", "table", "method", "starts_from", "metric"))
            if key in seen:
                first = seen[key]
                raise _fail(
                    path,
                    line,
                    f"duplicate (source, table, method, starts_from, metric) {key}, first on line {first}",
                )
            seen[key] = line
            lines.append(_Line(path, line, fields, value))
    return lines


def _our_unit(metric: str, value: float) -> float:
    """Printed unit → ours: percentages of mIoU/PixAcc and of sparsity become fractions, the rest stays."""
    if metric in PERCENT_TO_FRACTION or metric.startswith("sparsity."):
        return value / 100.0
    return value


def _run_id(source: str, table: str, method: str, starts_from: str, ambiguous: bool) -> str:
    run_id = f"published:{source}:{table}:{method}"
    return f"{run_id}:{starts_from}" if ambiguous else run_id


def _deltas(row: dict[str, Any], dense: dict[str, Any] | None, metric_names: Iterable[str]) -> None:
    """Fill ΔT (unless printed) and Δm against the table's dense row, or say in delta_note why not."""
    if dense is None:
        row["delta_note"] = f"no {DENSE_METHOD!r} row in table {row['source']}:{row['table']}"
        return
    names = [m for m in metric_names if m in DIRECTIONS]
    metrics = {m: row[m] for m in names if m in row}
    reference = {m: dense[m] for m in names if m in dense}
    tasks = row["tasks"].split(",")
    dataset = row["dataset"]
    try:
        row["delta_m"] = delta_m(metrics, reference, tasks, dataset=dataset)
        if "delta_t" not in row:  # a printed ΔT is the paper's own number: keep it
            row.update(delta_t(metrics, reference, tasks, dataset=dataset))
    except (KeyError, ValueError) as exc:
        row["delta_note"] = "not computed from the printed metrics: " + str(exc).strip("'\"")


def _rows(lines: list[_Line]) -> list[dict[str, Any]]:
    """Widen one file's lines into rows (one per ROW_KEY), in first-appearance order."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    first: dict[tuple[str, ...], _Line] = {}
    for entry in lines:
        fields = entry.fields
        key = tuple(fields[c] for c in ROW_KEY)
        if key not in rows:
            rows[key] = {c: fields[c] for c in (*ROW_KEY, *ROW_CONSTANT)}
            first[key] = entry
        else:
            for column in ROW_CONSTANT:
                if rows[key][column] != fields[column]:
                    raise _fail(
                        entry.path,
                        entry.line,
                        f"{column} {fields[column]!r} differs from {rows[key][column]!r} "
                        f"on line {first[key].line} for the same row {key}",
                    )
        rows[key][fields["metric"]] = _our_unit(fields["metric"], entry.value)
    return list(rows.values())


def plotted_sparsity(row: Mapping[str, Any] | pd.Series) -> float:
    """Where a published row (a ``load_published`` row) sits on a sparsity axis, as a fraction: the sparsity
    its paper's code really reaches (``real_sparsity``) where known, else the printed overall sparsity
    (``achieved_sparsity``), else the nominal ``target_sparsity``."""
    for column in (REAL_SPARSITY, "achieved_sparsity", "target_sparsity"):
        value = row.get(column)
        if value is not None and not pd.isna(value):
            return float(value)
    return math.nan


def load_published(root: str | Path | None = None, sources: Iterable[str] | None = None) -> pd.DataFrame:
    """Every published row of ``root`` (default: results/published) as a load_results-shaped frame.

    One wide row per (source, table, dataset, tasks, arch, method, starts_from); ``status`` is
    ``"published"``; metrics are in our units; ΔT/Δm are the printed ones where the paper prints them,
    else computed against the table's dense row (NaN with a ``delta_note`` when they cannot be).
    ``real_sparsity`` (NaN where unknown) is the sparsity the paper's own code reaches for the row's nominal
    ``target_sparsity``; figures place the row there (:func:`plotted_sparsity`).
    """
    folder = DEFAULT_ROOT if root is None else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"published-results folder {folder} does not exist")
    paths = sorted(folder.glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no *.csv files in {folder}")
    wanted = None if sources is None else set([sources] if isinstance(sources, str) else sources)
    all_rows: list[dict[str, Any]] = []
    tables: dict[tuple[str, str], Path] = {}
    for path in paths:
        lines = _read_file(path)
        for entry in lines:
            table = (entry.fields["source"], entry.fields["table"])
            if tables.setdefault(table, path) != path:
                raise _fail(path, entry.line, f"table {table} is also in {tables[table]}; one table per file")
        all_rows.extend(_rows(lines))
    if wanted is not None:
        unknown = wanted - {row["source"] for row in all_rows}
        if unknown:
            known = sorted({row["source"] for row in all_rows})
            raise ValueError(f"unknown published source(s) {sorted(unknown)}; known: {known}")
        all_rows = [row for row in all_rows if row["source"] in wanted]

    metric_names = sorted({k for row in all_rows for k in row if k not in (*ROW_KEY, *ROW_CONSTANT)})
    starts: dict[tuple[str, str, str], set[str]] = {}
    for row in all_rows:
        starts.setdefault((row["source"], row["table"], row["method"]), set()).add(row["starts_from"])
    dense_rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in all_rows:
        row["target_sparsity"] = float(row["target_sparsity"])
        row[REAL_SPARSITY] = float(row[REAL_SPARSITY]) if row[REAL_SPARSITY] else math.nan
        ambiguous = len(starts[(row["source"], row["table"], row["method"])]) > 1
        row["run_id"] = _run_id(row["source"], row["table"], row["method"], row["starts_from"], ambiguous)
        if row["method"] == DENSE_METHOD:
            dense_rows[(row["source"], row["table"])] = row
    for row in all_rows:
        dense = dense_rows.get((row["source"], row["table"]))
        row.update(
            method_name=row["method"],
            status="published",
            error=None,
            seed=math.nan,
            width=math.nan,
            head_width=math.nan,
            steps_total=math.nan,
            wall_s=math.nan,
            dense_run_id=None if dense is None else dense["run_id"],
            achieved_sparsity=row.pop(OVERALL_SPARSITY, math.nan),
        )
        _deltas(row, dense, metric_names)

    frame = pd.DataFrame(all_rows)
    for column in BASE_COLUMNS + EXTRA_COLUMNS:
        if column not in frame:
            frame[column] = None if column in ("status", "error", "delta_note", "dense_run_id") else math.nan
    metric_columns = sorted(c for c in frame.columns if c not in BASE_COLUMNS and c not in EXTRA_COLUMNS)
    frame = frame[BASE_COLUMNS + EXTRA_COLUMNS + metric_columns].reset_index(drop=True)
    for column in ["delta_t", "delta_m", "achieved_sparsity", REAL_SPARSITY, *metric_columns]:
        frame[column] = frame[column].astype(float)
    return frame
