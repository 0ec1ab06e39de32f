"""`load_results(store)`: one tidy row per cell, with ΔT/Δm against the dense stage of the same seed.

``delta_t``/``delta_m`` compare a cell with its dense model (the papers' number); ``delta_t_control`` /
``delta_m_control`` compare it with its setting's control cell (``dense-finetune``: the dense model
finetuned on the same budget, unpruned), which separates the effect of pruning from that of extra training.
``delta_m_stl`` compares it with single-task models (ECS's framing, Maninis et al.'s Δm): each task's
metrics against the dense stage trained on that task alone with the same spec otherwise (planned with
``stl_reference: true``, or ECS's single-task base); NaN unless every task has one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from mtlprune.analysis.delta import delta_m, delta_t
from mtlprune.spec.models import CONTROL_METHOD
from mtlprune.store import RESULT, SPEC, read_json
from mtlprune.store.integrity import StageFiles, inspect_stage
from mtlprune.store.records import StageResult

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
    "control_run_id",
    "delta_t_control",
    "delta_m_control",
    "collapsed_layers",
    "collapsed_components",
]


def _reference(run_dir: Path, cache: dict[str, StageResult | None]) -> StageResult | None:
    """A stage's intact result (None without one), read once per load."""
    if run_dir.name not in cache:
        cache[run_dir.name] = inspect_stage(run_dir).result
    return cache[run_dir.name]


def read_spec_record(run_dir: Path) -> dict[str, Any] | None:
    """A stage's ``spec.json`` (None when it is missing or damaged: mtlprune.store.integrity reports that)."""
    try:
        payload = read_json(run_dir / SPEC)
    except (OSError, ValueError):
        return None
    ok = isinstance(payload, dict) and isinstance(payload.get("spec"), dict) and "run_id" in payload
    return payload if ok else None


def _scalars(section: dict[str, Any]) -> dict[str, Any]:
    """The flat numeric entries of a result section (nested detail such as per-layer counts stays out)."""
    return {k: v for k, v in section.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def collapsed(sparsity: dict[str, Any]) -> tuple[int, str]:
    """Layer collapse in a result's sparsity section: how many prunable tensors were pruned to zero
    density, and the components that hold them (comma-joined, sorted; "" when none). A head with a fully
    pruned layer is disconnected: it predicts a constant, so the cell's metrics for that task are the
    trivial predictor's, not a pruning trade-off."""
    layers = sparsity.get("layers") or {}
    dead = [info for info in layers.values() if info.get("params") and info.get("sparsity") == 1.0]
    return len(dead), ",".join(sorted({str(info.get("component", "?")) for info in dead}))


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


def _setting_key(spec: dict[str, Any]) -> str:
    """A dense stage's spec without its task list: stages with equal keys differ only in their tasks."""
    data = {k: v for k, v in spec["data"].items() if k != "tasks"}
    return json.dumps({**spec, "data": data}, sort_keys=True, default=str)


def single_task_index(runs: Path) -> dict[str, dict[str, str]]:
    """Dense stages by setting: setting key → {task: run id of the single-task stage of that task}, and
    run id → setting key for every dense stage (multi-task ones included, to find their single-task peers)."""
    index: dict[str, dict[str, str]] = {"": {}}
    for spec_path in sorted(runs.glob(f"*/{SPEC}")) if runs.is_dir() else []:
        payload = read_spec_record(spec_path.parent)
        spec = {} if payload is None else payload["spec"]
        if spec.get("stage") != "dense" or "tasks" not in spec.get("data", {}):
            continue  # no task list, no single-task peers (a damaged dense record is load_dense's to report)
        key = _setting_key(spec)
        index[""][payload["run_id"]] = key
        if len(spec["data"]["tasks"]) == 1:
            index.setdefault(key, {})[spec["data"]["tasks"][0]] = payload["run_id"]
    return index


def _single_task_reference(
    runs: Path, dense_id: str, tasks: list[str], index: dict[str, dict[str, str]], cache: dict[str, Any]
) -> dict[str, float] | None:
    """Each task's metrics from its finished single-task stage (same setting as ``dense_id``); None unless
    every task has one."""
    peers = index.get(index[""].get(dense_id, "?"), {})
    reference: dict[str, float] = {}
    for task in tasks:
        run_id = peers.get(task)
        if run_id is None:
            return None
        found = _reference(runs / run_id, cache)
        if found is None:
            return None
        reference.update({k: v for k, v in found.metrics.items() if k.startswith(f"{task}.")})
    return reference


def _row(
    run_dir: Path,
    spec_payload: dict[str, Any],
    cache: dict[str, StageResult | None],
    index: dict[str, dict[str, str]] | None = None,
    state: StageFiles | None = None,
) -> dict[str, Any]:
    """One cell's row; ``cache`` holds the dense and control results already read (run id → result),
    ``index`` the dense stages by setting (:func:`single_task_index`) for Δm against single-task models,
    ``state`` the cell's folder as read (mtlprune.store.integrity)."""
    state = inspect_stage(run_dir) if state is None else state
    spec = spec_payload["spec"]
    method = spec["method"]
    params = method.get("params") or {}
    label = method.get("label") or method["name"] + (
        "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else ""
    )
    status, error = state.status, state.error
    row: dict[str, Any] = {
        **setting_columns(spec_payload),
        "method": label,
        "method_name": method["name"],
        "target_sparsity": spec["target_sparsity"],
        "status": status,
        "error": error,
        "dense_run_id": spec_payload.get("dense_run_id"),
        "control_run_id": spec_payload.get("control_run_id"),
    }
    result = state.result
    if result is None:
        return row
    if result.stage != "cell":
        raise ValueError(
            f"{run_dir / RESULT}: spec.json describes a cell, but the result is a {result.stage} stage's"
        )
    row.update(result.metrics)
    row["steps_total"] = result.steps_total
    row["wall_s"] = result.wall_s
    row.update(_scalars(result.sparsity))
    # "prunable" (pruning sparsity) or "delta" (a multi-model method's weight deltas, e.g. ECS): its own axis
    row["sparsity_axis"] = str(result.sparsity.get("axis", "prunable"))
    row["collapsed_layers"], row["collapsed_components"] = collapsed(result.sparsity)
    row.update(_scalars(result.costs or {}))
    row.update({f"latency.{k}": v for k, v in _scalars(result.latency or {}).items()})
    tasks, dataset = spec["data"]["tasks"], spec["data"]["dataset"]
    notes = []
    for suffix, reference_id, what in (
        ("", result.dense_run_id, "dense stage"),
        ("_control", spec_payload.get("control_run_id"), "control cell"),
    ):
        if reference_id is None:  # results written before the control row existed
            continue
        reference = _reference(run_dir.parent / reference_id, cache)
        if reference is None:
            if suffix and not (run_dir.parent / reference_id).is_dir():
                continue  # a matrix without the control row (controls: false): nothing to say
            notes.append(f"{what} {reference_id} has no result")
            continue
        try:
            changes = delta_t(result.metrics, reference.metrics, tasks, dataset=dataset)
            row[f"delta_t{suffix}"] = changes["delta_t"]
            if not suffix:
                row.update(changes)  # the per-task ΔT columns, against the dense model (the papers' number)
            row[f"delta_m{suffix}"] = delta_m(result.metrics, reference.metrics, tasks, dataset=dataset)
        except (KeyError, ValueError) as exc:  # e.g. a reference metric of 0: undefined, said so in the row
            notes.append(("against the control: " if suffix else "") + str(exc).strip("'\""))
    if index is not None and result.dense_run_id is not None:
        reference = _single_task_reference(run_dir.parent, result.dense_run_id, tasks, index, cache)
        if reference is not None:
            try:
                row["delta_m_stl"] = delta_m(result.metrics, reference, tasks, dataset=dataset)
            except (KeyError, ValueError) as exc:
                notes.append("against the single-task models: " + str(exc).strip("'\""))
    if notes:
        row["delta_note"] = "; ".join(notes)
    return row


def load_results(
    store: str | Path, run_ids: list[str] | None = None, planned: Iterable[Any] = ()
) -> pd.DataFrame:
    """Cells of the store (or just `run_ids`) as a DataFrame; pending, failed and damaged cells have no
    metrics (their ``error`` names each damaged file).

    A cell is found by its ``spec.json`` or, when that is missing or damaged, by its ``result.json``: then
    its setting comes from ``planned`` (the manifests' cells, mtlprune.store.records.ManifestCell), and a
    result no manifest knows is a ``damaged`` row naming the file.
    """
    runs = Path(store) / "runs"
    wanted = None if run_ids is None else set(run_ids)
    entries = {cell.run_id: cell for cell in planned}
    cache: dict[str, StageResult | None] = {}
    index = single_task_index(runs)
    rows = []
    found = (
        {p.parent for pattern in (SPEC, RESULT) for p in runs.glob(f"*/{pattern}")}
        if runs.is_dir()
        else set()
    )
    for run_dir in sorted(found):
        if wanted is not None and run_dir.name not in wanted:
            continue
        state = inspect_stage(run_dir)
        payload = read_spec_record(run_dir)
        if payload is None:
            entry = entries.get(run_dir.name)
            if entry is not None:
                rows.append(_row(run_dir, planned_record(entry, entries.values()), cache, index, state))
            elif (run_dir / RESULT).is_file() and (state.result is None or state.result.stage == "cell"):
                rows.append(_unknown_row(run_dir, state))
            continue  # a dense stage, or a folder without a result or spec: not a cell to show
        if payload["spec"].get("stage") != "cell":
            continue
        rows.append(_row(run_dir, payload, cache, index, state))
    frame = pd.DataFrame(rows)
    for column in BASE_COLUMNS:
        if column not in frame:
            text = column in ("status", "error", "delta_note", "control_run_id")
            frame[column] = None if text else math.nan
    metric_columns = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    frame = frame[BASE_COLUMNS + metric_columns]
    if run_ids is not None:
        order = {rid: i for i, rid in enumerate(run_ids)}
        frame = frame.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)
    return frame


def planned_record(entry: Any, cells: Iterable[Any] = ()) -> dict[str, Any]:
    """A spec record rebuilt from a manifest's stage (its ``spec.json`` went missing): what a row needs.
    A cell (a ``ManifestCell``) is compared with its dense stage and with the control cell among ``cells``
    that shares that dense stage (one per setting and seed)."""
    spec: dict[str, Any] = {
        "stage": "dense",
        "data": {"dataset": entry.dataset, "tasks": list(entry.tasks)},
        "arch": {"name": entry.arch, "width": entry.width, "head_width": entry.head_width},
        "seed": entry.seed,
        "eval": {"protocol": entry.protocol},
    }
    if not hasattr(entry, "method_name"):
        return {"run_id": entry.run_id, "spec": spec}
    spec.update(
        stage="cell",
        method={"name": entry.method_name, "label": entry.method},
        target_sparsity=entry.target,
    )
    controls = (
        c.run_id for c in cells if c.method_name == CONTROL_METHOD and c.dense_run_id == entry.dense_run_id
    )
    return {
        "run_id": entry.run_id,
        "spec": spec,
        "dense_run_id": entry.dense_run_id,
        "control_run_id": next(controls, None),
    }


def _unknown_row(run_dir: Path, state: StageFiles) -> dict[str, Any]:
    """A cell's result without a spec record that no manifest plans: shown as damaged, naming the file."""
    problems = "; ".join(f"{p.path}: {p.what}" for p in state.problems if p.path.name != SPEC)
    result = state.result
    return {
        "run_id": run_dir.name,
        "status": "damaged",
        "error": f"{run_dir / SPEC}: missing or damaged, and no manifest plans this cell"
        + (f"; {problems}" if problems else ""),
        "dense_run_id": None if result is None else getattr(result, "dense_run_id", None),
    }


def on_pruning_axis(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose sparsity is a pruning sparsity (``sparsity_axis`` not ``delta``).

    A multi-model method (ECS) reports the sparsity of its per-task weight deltas: another axis, so figures
    over sparsity, the AUC over sparsity, Pareto dominance per target and the rank statistics per target
    leave its rows out; tables keep them and say so, and the cost figure compares everyone.
    """
    if "sparsity_axis" not in frame:
        return frame
    return frame[frame["sparsity_axis"].fillna("prunable") != "delta"]
