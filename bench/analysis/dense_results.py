"""`load_dense(store)`: the dense stages' own metrics, the reference line of every accuracy figure.

`load_results` keeps one row per cell and turns the dense stage into ΔT/Δm; a figure of raw metrics needs
the dense numbers themselves. They are read from each dense stage's ``result.json`` (the stage a cell names
in ``dense_run_id``), keyed like the cells (dataset, tasks, arch, widths, seed, protocol), with the trivial
predictor's metrics (``trivial.<task>.<metric>``: the best constant prediction, mtlprune.engine.trivial) and
the convergence measure (``convergence_drop``: relative loss drop over the last 20% of training;
``converged``).

A decaying learning rate flattens that loss curve whether or not the model has learned what it can, so where
a matrix has its control row (the dense model finetuned on the finetune budget, unpruned) the second measure
is what the extra training bought: the control's ΔT against the dense model (`control_converged`). Above
``CONTROL_TOLERANCE`` points the dense model was not trained to convergence either: an unconverged dense
model lets methods that train longer beat it for reasons that are not pruning (ΔT against the control still
compares like with like).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from mtlprune.analysis.load import planned_record, read_spec_record, setting_columns
from mtlprune.store import RESULT, SPEC
from mtlprune.store.integrity import inspect_stage

__all__ = [
    "CONTROL_TOLERANCE",
    "DENSE_COLUMNS",
    "TRIVIAL",
    "control_converged",
    "dense_vs_trivial",
    "load_dense",
]

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
    "converged",
    "convergence_drop",
]
CONTROL_TOLERANCE = 5.0  # ΔT points the control may gain over the dense model from the finetune budget
TRIVIAL = "trivial."  # prefix of the trivial predictor's metric columns (mtlprune.engine.trivial)


def _row(run_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    state = inspect_stage(run_dir)
    row: dict[str, Any] = {**setting_columns(payload), "status": state.status, "error": state.error}
    result = state.result
    if result is not None:
        if result.stage != "dense":
            raise ValueError(f"{run_dir / RESULT}: expected a dense stage's result, got a {result.stage}'s")
        row.update(steps_total=result.steps_total, wall_s=result.wall_s)
        row.update(result.metrics)
        row.update({f"{TRIVIAL}{k}": v for k, v in (result.trivial_metrics or {}).items()})
        convergence = result.convergence or {}
        row.update(converged=convergence.get("converged"), convergence_drop=convergence.get("rel_drop"))
    return row


def load_dense(
    store: str | Path, run_ids: Iterable[str] | None = None, planned: Iterable[Any] = ()
) -> pd.DataFrame:
    """One row per dense stage of the store (or just ``run_ids``, e.g. a frame's ``dense_run_id``s).

    Stages without a result keep their status and error and have no metrics; an id with no ``spec.json``
    (never started in this store) or that is not a dense stage is left out. A stage whose ``spec.json`` is
    missing or damaged takes its setting from ``planned`` (the manifests' dense stages) when they list it.
    """
    runs = Path(store) / "runs"
    entries = {entry.run_id: entry for entry in planned}
    found = (
        {p.parent for pattern in (SPEC, RESULT) for p in runs.glob(f"*/{pattern}")}
        if runs.is_dir()
        else set()
    )
    if run_ids is not None:
        wanted = {str(r) for r in run_ids if isinstance(r, str) and r}
        found = {d for d in found if d.name in wanted}
    rows = []
    for run_dir in sorted(found):
        payload = read_spec_record(run_dir)
        if payload is None and run_dir.name in entries:
            payload = planned_record(entries[run_dir.name])
        if payload is None or payload["spec"].get("stage") != "dense":
            continue  # a damaged spec record no manifest explains: `mtlprune store check` names it
        rows.append(_row(run_dir, payload))
    frame = pd.DataFrame(rows)
    for column in DENSE_COLUMNS:
        if column not in frame:
            frame[column] = None
    metrics = sorted(c for c in frame.columns if c not in DENSE_COLUMNS)
    return frame[DENSE_COLUMNS + metrics]


def dense_vs_trivial(dense: pd.DataFrame) -> pd.DataFrame:
    """Per setting: each main metric of the dense model (mean over seeds) beside the trivial predictor's,
    and whether every seed's dense stage converged: the headroom a comparison of pruning methods has.

    Columns: dataset, tasks, arch, width, head_width, protocol, ``metric``, ``dense`` (mean over finished
    seeds), ``trivial`` (mean over seeds), ``n_seeds``, ``converged`` (True/False when every seed says so,
    None when unknown), ``convergence_drop`` (the largest over seeds).
    """
    from mtlprune.vocabulary import MAIN_METRIC

    done = dense[dense["status"] == "done"] if "status" in dense else dense
    keys = ["dataset", "tasks", "arch", "width", "head_width", "protocol"]
    rows = []
    for key, group in done.groupby(keys, sort=True, dropna=False):
        flags = [v for v in group["converged"] if v is not None and not pd.isna(v)]
        converged = None if len(flags) < len(group) else all(bool(v) for v in flags)
        drops = pd.to_numeric(group["convergence_drop"], errors="coerce")
        for task in str(key[1]).split(","):
            metric = f"{task}.{MAIN_METRIC[task]}"
            if metric not in group or f"{TRIVIAL}{metric}" not in group:
                continue
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "metric": metric,
                    "dense": float(pd.to_numeric(group[metric]).mean()),
                    "trivial": float(pd.to_numeric(group[f"{TRIVIAL}{metric}"]).mean()),
                    "n_seeds": len(group),
                    "converged": converged,
                    "convergence_drop": float(drops.max()) if drops.notna().any() else None,
                }
            )
    columns = [*keys, "metric", "dense", "trivial", "n_seeds", "converged", "convergence_drop"]
    return pd.DataFrame(rows, columns=columns)


def control_converged(control_delta_t: float) -> bool:
    """Whether the control's ΔT against its dense model says the dense model had converged."""
    return abs(control_delta_t) <= CONTROL_TOLERANCE
