"""Cells without a result (damaged, failed, running, pending, missing), each with its error (a damaged one's
names each damaged file), and finished cells whose
masks collapsed whole layers: the report never drops them silently."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from mtlprune.analysis.labels import arch_title
from mtlprune.analysis.report.collect import MISSING, ReportData
from mtlprune.store import Store
from mtlprune.vocabulary import dataset_title

LEFT = ' class="l"'


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
    """One printed line per collapsed method and target (see :func:`collapse_note`)."""
    return [
        f"{method} at {target:g}: {lo}–{hi} layers pruned to zero density in {', '.join(parts)} "
        f"({seeds} seed(s)); a head with a fully pruned layer predicts a constant"
        for method, target, seeds, lo, hi, parts in _collapsed_groups(frame)
    ]


def collapse_note(frame: pd.DataFrame) -> str:
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


def attention_section(data: ReportData) -> str:
    """Failed, running/pending and missing cells and dense stages, each with its error: never dropped;
    then finished cells whose masks collapsed whole layers."""
    frame = data.frame
    unfinished = frame[frame["status"] != "done"]
    dense_bad = data.dense[data.dense["status"] != "done"] if not data.dense.empty else data.dense
    if unfinished.empty and dense_bad.empty:
        return f"<p>All {len(frame)} cells finished.</p>" + collapse_note(frame)
    order = {"damaged": 0, "failed": 1, "running": 2, "pending": 3, MISSING: 4}
    ranked = unfinished.assign(_o=unfinished["status"].map(order).fillna(9))
    ranked = ranked.sort_values(["_o", "dataset", "arch", "method", "target_sparsity", "seed"])
    rows = []
    for row in ranked.itertuples(index=False):
        status = str(row.status)
        details = _failure_details(data.store, str(row.run_id)) if status == "failed" else ""
        cells = [(status, True), (str(row.run_id), True), (dataset_title(str(row.dataset)), True)]
        cells += [(arch_title(str(row.arch)), True), (str(row.method), True)]
        cells += [(f"{100 * float(row.target_sparsity):g}", False), (str(row.seed), False)]
        rows.append(_tr(status, [*cells, (_text(row.error), True)], details))
    for row in dense_bad.itertuples(index=False):
        status = str(row.status)
        cells = [(f"dense {status}", True), (str(row.run_id), True), (dataset_title(str(row.dataset)), True)]
        cells += [
            (arch_title(str(row.arch)), True),
            ("(dense stage)", True),
            ("0", False),
            (str(row.seed), False),
        ]
        rows.append(_tr(status, [*cells, (_text(row.error), True)]))
    heads = [("Status", True), ("Run", True), ("Dataset", True), ("Arch", True), ("Method", True)]
    heads += [("Target (%)", False), ("Seed", False), ("Error", True)]
    head = "".join(f"<th{LEFT if left else ''}>{h}</th>" for h, left in heads)
    return (
        f"<p>{len(unfinished)} of {len(frame)} cells have no result; they are left out of the figures and "
        "marked in the tables.</p>"
        f'<div class="scroll"><table id="attention-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>" + collapse_note(frame)
    )
