"""`load_results(store)`: one tidy row per cell, with ΔT/Δm against the dense stage of the same seed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.aggregate import delta_m, delta_t
from bench.store import RESULT, SPEC, STATUS, read_json

BASE_COLUMNS = [
    "run_id",
    "dataset",
    "tasks",
    "arch",
    "width",
    "head_width",
    "method",
    "method_name",
    "target_sparsity",
    "achieved_sparsity",
    "seed",
    "protocol",
    "steps_total",
    "wall_s",
    "status",
    "error",
    "dense_run_id",
    "delta_t",
    "delta_m",
    "delta_note",
]


def _status(run_dir: Path) -> tuple[str, str | None]:
    if (run_dir / RESULT).is_file():
        return "done", None
    if (run_dir / STATUS).is_file():
        record = read_json(run_dir / STATUS)
        return str(record.get("status", "pending")), record.get("error")
    return "pending", None


def _scalars(section: dict[str, Any]) -> dict[str, Any]:
    """The flat numeric entries of a result section (nested detail such as per-layer counts stays out)."""
    return {k: v for k, v in section.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def setting_columns(spec_payload: dict[str, Any]) -> dict[str, Any]:
    """The columns that say which setting a stage (dense or cell) belongs to, from its spec.json."""
    spec = spec_payload["spec"]
    return {
        "run_id": spec_payload["run_id"],
        "dataset": spec["data"]["dataset"],
        "tasks": ",".join(spec["data"]["tasks"]),
        "arch": spec["arch"]["name"],
        "width": spec["arch"]["width"],
        "head_width": spec["arch"]["head_width"],
        "seed": spec["seed"],
        "protocol": spec["eval"]["protocol"],
    }


def _row(run_dir: Path, spec_payload: dict[str, Any], dense_cache: dict[str, dict | None]) -> dict[str, Any]:
    spec = spec_payload["spec"]
    method = spec["method"]
    params = method.get("params") or {}
    label = method["name"] + (
        "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else ""
    )
    status, error = _status(run_dir)
    row: dict[str, Any] = {
        **setting_columns(spec_payload),
        "method": label,
        "method_name": method["name"],
        "target_sparsity": spec["target_sparsity"],
        "status": status,
        "error": error,
        "dense_run_id": spec_payload.get("dense_run_id"),
    }
    if status != "done":
        return row
    result = read_json(run_dir / RESULT)
    row.update(result["metrics"])
    row["steps_total"] = result["steps_total"]
    row["wall_s"] = result["wall_s"]
    row.update(_scalars(result["sparsity"]))
    row.update(_scalars(result.get("costs", {})))
    row.update({f"latency.{k}": v for k, v in _scalars(result.get("latency", {})).items()})
    dense_id = result["dense_run_id"]
    if dense_id not in dense_cache:
        dense_path = run_dir.parent / dense_id / RESULT
        dense_cache[dense_id] = read_json(dense_path) if dense_path.is_file() else None
    dense = dense_cache[dense_id]
    if dense is None:
        row["delta_note"] = f"dense stage {dense_id} has no result"
        return row
    tasks = spec["data"]["tasks"]
    try:
        row.update(delta_t(result["metrics"], dense["metrics"], tasks, dataset=spec["data"]["dataset"]))
        row["delta_m"] = delta_m(result["metrics"], dense["metrics"], tasks, dataset=spec["data"]["dataset"])
    except (KeyError, ValueError) as exc:  # e.g. a dense metric of 0: ΔT undefined, said so in the row
        row["delta_note"] = str(exc).strip("'\"")
    return row


def load_results(store: str | Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """Cells of the store (or just `run_ids`) as a DataFrame; pending and failed cells have no metrics."""
    runs = Path(store) / "runs"
    wanted = None if run_ids is None else set(run_ids)
    dense_cache: dict[str, dict | None] = {}
    rows = []
    for spec_path in sorted(runs.glob(f"*/{SPEC}")) if runs.is_dir() else []:
        if wanted is not None and spec_path.parent.name not in wanted:
            continue
        payload = read_json(spec_path)
        if payload["spec"].get("stage") != "cell":
            continue
        rows.append(_row(spec_path.parent, payload, dense_cache))
    frame = pd.DataFrame(rows)
    for column in BASE_COLUMNS:
        if column not in frame:
            frame[column] = None if column in ("status", "error", "delta_note") else math.nan
    metric_columns = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    frame = frame[BASE_COLUMNS + metric_columns]
    if run_ids is not None:
        order = {rid: i for i, rid in enumerate(run_ids)}
        frame = frame.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)
    return frame
