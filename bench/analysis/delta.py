"""Multi-task aggregates of a model's metrics relative to its dense reference (torch-free).

Both scores compare each metric M_i with the dense model's M_i^dense as a signed relative change
s_i · (M_i − M_i^dense) / M_i^dense, with s_i = +1 for higher-is-better and −1 for lower-is-better metrics
(directions from :mod:`mtlprune.vocabulary`), so positive always means "better than dense". They differ in
how a task's metrics are combined:

* ``delta_t`` (AdapMTL's ΔT): per task a **sum** over its metrics, ×100, then the mean over tasks. This is
  the formula that reproduces every ΔT cell of AdapMTL's Table 2.
* ``delta_m`` (Maninis et al.): per task a **mean** over its metrics, ×100, then the mean over tasks.

A task with k metrics therefore has ΔT_t = k · Δm_t; the two are not interchangeable.

Which metrics count: for each task, the columns ``<task>.<metric>`` of the dataset's ΔT metric set
(``mtlprune.vocabulary.DELTA_METRICS[dataset]``, ``dataset="nyuv2"`` by default: all twelve NYU-v2 metrics;
one per task on Tiny-Taskonomy) that are present in ``dense``.
Other keys (costs, sparsity, another dataset's columns such as Taskonomy's ``segment_semantic.err`` in an
NYU run) are ignored, which is why the dataset is a parameter rather than guessed from the keys. The
relative change is scale-free, so fractions and percentages give the same score as long as both sides use
the same unit. NaN values propagate (a diverged run gets a NaN score, not a silently partial one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtlprune.vocabulary import delta_metrics, direction

__all__ = ["delta_m", "delta_t"]


def _task_changes(
    metrics: Mapping[str, float], dense: Mapping[str, float], tasks: Sequence[str], dataset: str
) -> dict[str, list[float]]:
    """Per task, the signed relative changes ×100 of each of its metrics that the dense run reports."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a sequence of task names, not the string {tasks!r}")
    if not tasks:
        raise ValueError("tasks is empty; an aggregate needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {list(tasks)} lists a task more than once")
    vocabulary = delta_metrics(dataset)
    changes: dict[str, list[float]] = {}
    for task in tasks:
        if task not in vocabulary:
            known = ", ".join(vocabulary)
            raise KeyError(f"no metric set for task {task!r} of dataset {dataset!r}; known tasks: {known}")
        columns = [f"{task}.{m}" for m in vocabulary[task] if f"{task}.{m}" in dense]
        if not columns:
            expected = ", ".join(f"{task}.{m}" for m in vocabulary[task])
            raise ValueError(f"dense reference has no metric of task {task!r} (expected any of: {expected})")
        values = []
        for column in columns:
            if column not in metrics:
                raise KeyError(f"metric column {column!r} is in the dense reference but missing from metrics")
            ref = float(dense[column])
            if ref == 0.0:
                raise ValueError(f"dense value of {column!r} is 0; the relative change is undefined")
            values.append(100.0 * direction(column) * (float(metrics[column]) - ref) / ref)
        changes[task] = values
    return changes


def delta_t(
    metrics: Mapping[str, float],
    dense: Mapping[str, float],
    tasks: Sequence[str],
    *,
    dataset: str = "nyuv2",
) -> dict[str, float]:
    """AdapMTL's ΔT: ``{"delta_t": mean over tasks, "delta_t.<task>": sum over that task's metrics}``."""
    changes = _task_changes(metrics, dense, tasks, dataset)
    per_task = {task: sum(values) for task, values in changes.items()}
    out = {"delta_t": sum(per_task.values()) / len(per_task)}
    out.update({f"delta_t.{task}": value for task, value in per_task.items()})
    return out


def delta_m(
    metrics: Mapping[str, float],
    dense: Mapping[str, float],
    tasks: Sequence[str],
    *,
    dataset: str = "nyuv2",
) -> float:
    """Maninis et al.'s Δm: mean over tasks of the mean signed relative change (%) of each task's metrics."""
    changes = _task_changes(metrics, dense, tasks, dataset)
    per_task = [sum(values) / len(values) for values in changes.values()]
    return sum(per_task) / len(per_task)
