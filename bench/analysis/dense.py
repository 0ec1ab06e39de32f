"""`load_dense(store)`: the dense stages' own metrics, the reference line of every accuracy figure.

`load_results` keeps one row per cell and turns the dense stage into ΔT/Δm; a figure of raw metrics needs
the dense numbers themselves. They are read from each dense stage's ``result.json`` (the stage a cell names
in ``dense_run_id``), keyed like the cells (dataset, tasks, arch, widths, seed, protocol).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.load import setting_columns
from bench.store import RESULT, SPEC, STATUS, read_json

__all__ = ["DENSE_COLUMNS", "load_dense"]

DENSE_COLUMNS = [
    "run_id",
    "dataset",
    "tasks",
    "arch",
    "width",
    "head_width",
    "seed",
    "protocol",
    "status",
    "error",
    "steps_total",
    "wall_s",
]


def _row(run_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {**setting_columns(payload), "status": "pending", "error": None}
    if (run_dir / RESULT).is_file():
        result = read_json(run_dir / RESULT)
        row.update(status="done", steps_total=result.get("steps_total"), wall_s=result.get("wall_s"))
        row.update(result["metrics"])
    elif (run_dir / STATUS).is_file():
        record = read_json(run_dir / STATUS)
        row.update(status=str(record.get("status", "pending")), error=record.get("error"))
    return row


def load_dense(store: str | Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per dense stage of the store (or just ``run_ids``, e.g. a frame's ``dense_run_id``s).

    Stages without a result keep their status and error and have no metrics; an id with no ``spec.json``
    (never started in this store) or that is not a dense stage is left out.
    """
    runs = Path(store) / "runs"
    if run_ids is None:
        dirs = [p.parent for p in sorted(runs.glob(f"*/{SPEC}"))] if runs.is_dir() else []
    else:
        wanted = sorted({str(r) for r in run_ids if isinstance(r, str) and r})
        dirs = [runs / r for r in wanted if (runs / r / SPEC).is_file()]
    rows = []
    for run_dir in dirs:
        payload = read_json(run_dir / SPEC)
        if payload["spec"].get("stage") != "dense":
            continue
        rows.append(_row(run_dir, payload))
    frame = pd.DataFrame(rows)
    for column in DENSE_COLUMNS:
        if column not in frame:
            frame[column] = None
    metrics = sorted(c for c in frame.columns if c not in DENSE_COLUMNS)
    return frame[DENSE_COLUMNS + metrics]
