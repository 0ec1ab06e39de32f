"""Mask analytics from stored keep-masks alone: per-layer sparsity, cross-task IoU, overlap between methods.

Everything here reads the bit-packed archives of :mod:`mtlprune.store.maskio` (``masks.npz``: a run's final
keep-masks; ``task_masks.npz``: what each task would keep on its own, for methods that select per task)
and works on NumPy bool arrays: no torch, no model code, so it runs wherever the results are copied.

Conventions shared by every function:

- A mask is ``True`` where a weight is **kept**; sparsity is the pruned fraction ``1 − kept / params``.
- Layers keep the order in which the archive stores them (the model's ``named_modules`` order), so a
  layer's ``depth`` (its index within its component) is its order of appearance, input side first.
- IoU / Jaccard is ``|∩| / |∪|`` of the kept weights. When the union is empty (nobody keeps anything in a
  layer) the ratio is undefined and reported as NaN, never as 0 or 1: both would be a claim the data
  cannot make. Overall numbers pool the weights of all layers (ratio of summed counts), so they are
  weighted by layer size, not a mean of per-layer ratios.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from mtlprune.store.maskio import MASKS, TASK_MASKS, read_masks, read_task_masks

Masks = Mapping[str, np.ndarray]

OVERALL = "overall"  # the `layer` of the pooled row that task_iou and mask_overlap append
SETTING_COLUMNS = ("dataset", "tasks", "arch", "width", "head_width", "seed", "protocol")


def component_of(name: str) -> str:
    """``backbone`` or ``head/<task>`` for a parameter name, without the model.

    A torch-free twin of ``MTLModel.component_of``: stored masks carry names only, and the model's
    naming (``backbone.…`` / ``heads.<task>.…``) is what decides the component there too.
    """
    if name.startswith("backbone."):
        return "backbone"
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "heads" and parts[1] and parts[2]:
        return f"head/{parts[1]}"
    raise KeyError(f"parameter {name!r} belongs to no component (expected 'backbone.…' or 'heads.<task>.…')")


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (an undefined IoU, not a zero one)."""
    return numerator / denominator if denominator else math.nan


def layer_sparsity(masks: Masks) -> pd.DataFrame:
    """One row per stored tensor (stored order): where the pruning went, layer by layer.

    Columns: ``layer`` (parameter name), ``component``, ``depth`` (index within its component, order of
    appearance), ``params``, ``kept``, ``sparsity`` (pruned fraction; NaN for an empty tensor).
    """
    rows = []
    depth: dict[str, int] = {}
    for name, mask in masks.items():
        component = component_of(name)
        params, kept = int(mask.size), int(np.count_nonzero(mask))
        rows.append(
            {
                "layer": name,
                "component": component,
                "depth": depth.get(component, 0),
                "params": params,
                "kept": kept,
                "sparsity": 1.0 - _ratio(kept, params),
            }
        )
        depth[component] = depth.get(component, 0) + 1
    columns = ["layer", "component", "depth", "params", "kept", "sparsity"]
    return pd.DataFrame(rows, columns=columns)


def _check_same_layout(reference: Masks, other: Masks, ref_label: str, other_label: str) -> None:
    """Raise naming the tensors that one side lacks or whose shapes differ: they cannot be compared."""
    missing = [n for n in reference if n not in other]
    extra = [n for n in other if n not in reference]
    if missing or extra:
        raise ValueError(
            f"{ref_label} and {other_label} store different tensors: "
            f"only in {ref_label}: {missing or 'none'}; only in {other_label}: {extra or 'none'}"
        )
    for name, mask in reference.items():
        if mask.shape != other[name].shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(mask.shape)} in {ref_label} "
                f"but {tuple(other[name].shape)} in {other_label}"
            )


def task_iou(task_masks: Mapping[str, Masks]) -> pd.DataFrame:
    """Per shared (backbone) layer, how much the tasks agree on what to keep: DiSparse's IoU analysis.

    ``task_masks`` is task → parameter name → the keep-mask that task would choose on its own (as read
    from ``task_masks.npz``). Only backbone tensors are compared, since heads are private to one task.
    The returned rows are the backbone tensors in stored order, then one ``overall`` row pooling every
    backbone weight (the paper's "Total IoU"). Columns:

    - ``iou``: ``|∩_t keep_t| / |∪_t keep_t|`` over **all** tasks. With 2 tasks this is exactly the
      number of DiSparse's ``iou_analysis.py``; with more tasks it is the strict all-task agreement.
    - ``mean_pairwise_iou``: the mean over task pairs of ``|keep_a ∩ keep_b| / |keep_a ∪ keep_b|``
      (equal to ``iou`` for 2 tasks). Pairs with an empty union are undefined and left out of the mean;
      NaN if no pair is defined. The overall row pools each pair's counts over layers, then averages.
    - ``intersection``, ``union`` (counts behind ``iou``), ``params``, ``depth``, ``kept.<task>``.

    For 5 tasks the reference script counts positions where exactly two tasks agree, a quirk that is
    neither the all-task IoU nor a pairwise mean; it is deliberately not reproduced. An empty union
    (no task keeps anything in a layer) gives NaN, not 0 or 1.
    """
    tasks = list(task_masks)
    if len(tasks) < 2:
        raise ValueError(f"cross-task IoU needs at least 2 tasks, got {tasks}")
    first = task_masks[tasks[0]]
    shared = {name: mask for name, mask in first.items() if name.startswith("backbone.")}
    if not shared:
        raise ValueError(f"task {tasks[0]!r} has no backbone mask: nothing is shared between the tasks")
    for task in tasks[1:]:
        theirs = {n: m for n, m in task_masks[task].items() if n.startswith("backbone.")}
        _check_same_layout(shared, theirs, f"task {tasks[0]!r}", f"task {task!r}")

    pairs = list(combinations(range(len(tasks)), 2))
    rows = []
    pair_totals = np.zeros((len(pairs), 2), dtype=np.int64)  # per pair: summed intersection, union
    for depth, name in enumerate(shared):
        stack = np.stack([np.asarray(task_masks[t][name], dtype=np.bool_).reshape(-1) for t in tasks])
        intersection = int(np.count_nonzero(stack.all(axis=0)))
        union = int(np.count_nonzero(stack.any(axis=0)))
        pair_counts = np.array(
            [
                (np.count_nonzero(stack[i] & stack[j]), np.count_nonzero(stack[i] | stack[j]))
                for i, j in pairs
            ],
            dtype=np.int64,
        )
        pair_totals += pair_counts
        row = {
            "layer": name,
            "depth": depth,
            "params": int(stack.shape[1]),
            "intersection": intersection,
            "union": union,
            "iou": _ratio(intersection, union),
            "mean_pairwise_iou": _nanmean([_ratio(int(i), int(u)) for i, u in pair_counts]),
        }
        row.update({f"kept.{t}": int(n) for t, n in zip(tasks, stack.sum(axis=1), strict=True)})
        rows.append(row)
    frame = pd.DataFrame(rows)
    intersection, union = int(frame["intersection"].sum()), int(frame["union"].sum())
    overall = {
        "layer": OVERALL,
        "depth": pd.NA,
        "params": int(frame["params"].sum()),
        "intersection": intersection,
        "union": union,
        "iou": _ratio(intersection, union),
        "mean_pairwise_iou": _nanmean([_ratio(int(i), int(u)) for i, u in pair_totals]),
        **{f"kept.{t}": int(frame[f"kept.{t}"].sum()) for t in tasks},
    }
    frame = pd.concat([frame, pd.DataFrame([overall])], ignore_index=True)
    frame["depth"] = frame["depth"].astype("Int64")
    frame.attrs["tasks"] = tasks
    return frame


def _nanmean(values: list[float]) -> float:
    """Mean of the defined values; NaN (without a warning) when none is defined."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def mask_overlap(masks_a: Masks, masks_b: Masks) -> pd.DataFrame:
    """Per layer, the Jaccard index of the weights two runs keep, then one ``overall`` row.

    Two methods at the same sparsity can keep very different weights; ``|a ∧ b| / |a ∨ b|`` of the kept
    weights says how different. Rows follow ``masks_a``'s order; columns ``layer``, ``component``
    (``all`` on the overall row), ``params``, ``kept_a``, ``kept_b``, ``intersection``, ``union``,
    ``jaccard`` (NaN where neither run keeps anything). Both runs must store the same tensor names and
    shapes (same model); otherwise the error names the tensors that differ.
    """
    _check_same_layout(masks_a, masks_b, "run a", "run b")
    rows = []
    for name, a in masks_a.items():
        a = np.asarray(a, dtype=np.bool_)
        b = np.asarray(masks_b[name], dtype=np.bool_)
        intersection, union = int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
        rows.append(
            {
                "layer": name,
                "component": component_of(name),
                "params": int(a.size),
                "kept_a": int(np.count_nonzero(a)),
                "kept_b": int(np.count_nonzero(b)),
                "intersection": intersection,
                "union": union,
                "jaccard": _ratio(intersection, union),
            }
        )
    columns = ["layer", "component", "params", "kept_a", "kept_b", "intersection", "union", "jaccard"]
    frame = pd.DataFrame(rows, columns=columns)
    totals = {c: int(frame[c].sum()) for c in columns[2:-1]}
    overall = {"layer": OVERALL, "component": "all", **totals}
    overall["jaccard"] = _ratio(totals["intersection"], totals["union"])
    return pd.concat([frame, pd.DataFrame([overall], columns=columns)], ignore_index=True)


def _run_file(store: str | Path, run_id: str, filename: str, why_absent: str) -> Path:
    path = Path(store) / "runs" / run_id / filename
    if not path.is_file():
        raise FileNotFoundError(f"run {run_id}: no {filename} at {path} ({why_absent})")
    return path


def load_masks(store: str | Path, run_id: str) -> dict[str, np.ndarray]:
    """A run's final keep-masks (``<store>/runs/<run_id>/masks.npz``) as name → NumPy bool array."""
    return read_masks(_run_file(store, run_id, MASKS, "the cell is not done, or it is not a pruned cell"))


def load_task_masks(store: str | Path, run_id: str) -> dict[str, dict[str, np.ndarray]]:
    """Each task's own keep-masks (``task_masks.npz``) as task → name → NumPy bool array."""
    why = "only methods that select a mask per task write it, and only once the cell is done"
    return read_task_masks(_run_file(store, run_id, TASK_MASKS, why))


def overlap_matrix(
    store: str | Path,
    frame: pd.DataFrame,
    target_sparsity: float,
    dataset: str | None = None,
    arch: str | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Methods × methods overall Jaccard of the kept weights, for the done cells of one setting.

    ``frame`` is :func:`mtlprune.analysis.load_results` output (or a filtered part of it). The cells kept
    are the done ones at ``target_sparsity`` (compared with a float tolerance) and, where given, of
    ``dataset``, ``arch`` and ``seed``; they must then form a single setting (dataset, tasks, arch,
    widths, seed, protocol), since masks of different models or seeds are not comparable, and hold one
    cell per method label (``method`` column, parameters included). Rows and columns are sorted by
    label; the diagonal is 1 (NaN only for a mask that keeps nothing). ``attrs`` records the setting
    and the run ids used.
    """
    cells = frame[frame["status"] == "done"]
    cells = cells[np.isclose(cells["target_sparsity"].astype(float), target_sparsity, rtol=0, atol=1e-9)]
    for column, value in (("dataset", dataset), ("arch", arch), ("seed", seed)):
        if value is not None:
            cells = cells[cells[column] == value]
    if cells.empty:
        done = frame[frame["status"] == "done"]
        available = sorted(set(done["target_sparsity"].astype(float)))
        raise ValueError(
            f"no done cell at target sparsity {target_sparsity:g} with dataset={dataset}, arch={arch}, "
            f"seed={seed}; done cells have target sparsities {available}"
        )
    setting_columns = [c for c in SETTING_COLUMNS if c in cells]
    settings = cells[setting_columns].drop_duplicates()
    if len(settings) > 1:
        listed = "; ".join(
            ", ".join(f"{k}={v}" for k, v in row.items()) for row in settings.to_dict("records")
        )
        raise ValueError(
            f"{len(settings)} settings at target sparsity {target_sparsity:g} ({listed}): "
            "pass dataset=, arch=, seed= or filter the frame to one setting"
        )
    duplicated = cells[cells["method"].duplicated(keep=False)]
    if not duplicated.empty:
        raise ValueError(
            "several cells per method in one setting: "
            + ", ".join(f"{m}: {r}" for m, r in zip(duplicated["method"], duplicated["run_id"], strict=True))
        )
    cells = cells.sort_values("method")
    labels = [str(m) for m in cells["method"]]
    run_ids = [str(r) for r in cells["run_id"]]
    loaded = [load_masks(store, run_id) for run_id in run_ids]
    names = list(loaded[0])
    for run_id, masks in zip(run_ids[1:], loaded[1:], strict=True):
        _check_same_layout(loaded[0], masks, f"run {run_ids[0]}", f"run {run_id}")
    # One flat vector per run: the overall Jaccard pools all weights, so layers need not stay apart.
    flat = [np.concatenate([masks[n].reshape(-1) for n in names]) for masks in loaded]
    values = np.full((len(labels), len(labels)), math.nan)
    for i, j in combinations(range(len(labels)), 2):
        union = int(np.count_nonzero(flat[i] | flat[j]))
        values[i, j] = values[j, i] = _ratio(int(np.count_nonzero(flat[i] & flat[j])), union)
    for i, vector in enumerate(flat):
        values[i, i] = 1.0 if vector.any() else math.nan
    index = pd.Index(labels, name="method")
    matrix = pd.DataFrame(values, index=index, columns=index.copy())
    matrix.attrs.update(settings.iloc[0].to_dict())
    matrix.attrs.update(
        target_sparsity=float(target_sparsity), run_ids=dict(zip(labels, run_ids, strict=True))
    )
    return matrix
