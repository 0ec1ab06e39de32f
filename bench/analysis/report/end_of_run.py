"""The end of `mtlprune run`: ``results.parquet``, the ΔT figure and the summary table it prints."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mtlprune.analysis import load_results, summary_table
from mtlprune.analysis.report.attention import collapse_lines
from mtlprune.store import Store, atomic_write_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from mtlprune.spec import MatrixSpec

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


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def write_run_report(matrix: MatrixSpec, store: Store, console: Console) -> Path:
    """``<store>/<matrix name>/results.parquet`` + ΔT figure (PNG, PDF) + the printed summary."""
    from rich.table import Table

    from mtlprune.analysis.figures import SparseFigureWarning, delta_t_vs_sparsity

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SparseFigureWarning)
        figures = delta_t_vs_sparsity(frame, out / "delta_t_vs_sparsity")
    sparse = [f" ({w.message})" for w in caught if issubclass(w.category, SparseFigureWarning)]
    shown = ", ".join(str(p) for p in figures)
    console.print(f"results: {out / 'results.parquet'}; figures: {shown}{''.join(sparse)}")
    return out
