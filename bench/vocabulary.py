"""Task and metric names, torch-free so the analysis layer can use them (docs/protocols.md).

Every metric column is ``<task>.<metric>``; its direction is +1 when higher is better and -1 when lower is
better. A dataset plugin declares its `Vocabulary` (its tasks' metrics with directions, the subset that
enters ΔT/Δm, each task's main metric, and how they are shown: the dataset's and tasks' display names and
each metric's `MetricName` with its unit and display scale) and registers it with
:func:`register_vocabulary`; the tables below are the union over the registered datasets, and ΔT/Δm, every
table and every figure read directions, names and units from here and nowhere else. The built-in datasets'
vocabularies (``mtlprune.datasets.vocabularies``) and those of the ``mtlprune.vocabularies`` entry-point group
load on import, without torch; a plugin may also register its vocabulary when it is imported (``--plugin``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

HIGHER = 1
LOWER = -1

# Evaluation protocols (docs/protocols.md): our pooled, corrected evaluation and the AdapMTL reference one.
PROTOCOLS: tuple[str, ...] = ("standard", "adapmtl")


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of :data:`PROTOCOLS`, else a ValueError naming the allowed ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return protocol


BUILTIN_VOCABULARIES = "mtlprune.datasets.vocabularies"
ENTRY_POINT_GROUP = "mtlprune.vocabularies"


@dataclass(frozen=True)
class MetricName:
    """How a metric is shown. ``text``: its name within its task (``mIoU``); ``latex``: the same as LaTeX
    source when it needs math (None: ``text`` escaped); ``unit``: ``%``, ``°``, ``m`` or empty; ``scale``:
    shown value = stored value × scale (mIoU is stored as a fraction and shown in %)."""

    text: str
    latex: str | None = None
    unit: str = ""
    scale: float = 1.0


@dataclass(frozen=True)
class Vocabulary:
    """One dataset's metric vocabulary.

    ``metrics``: task → metric → direction, in reporting order; ``delta``: task → the metrics that enter
    ΔT/Δm; ``main``: task → the metric that summary tables and figures show first. Display (optional):
    ``title`` (``NYU-v2``; default the dataset name), ``task_names`` (task → short name, ``Seg``),
    ``names`` (task → metric → :class:`MetricName`; default: the metric's own name, no unit, scale 1).
    """

    dataset: str
    metrics: Mapping[str, Mapping[str, int]]
    delta: Mapping[str, tuple[str, ...]]
    main: Mapping[str, str]
    title: str = ""
    task_names: Mapping[str, str] = field(default_factory=dict)
    names: Mapping[str, Mapping[str, MetricName]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"vocabulary of dataset {self.dataset!r}"
        for task, metrics in self.metrics.items():
            bad = {m: d for m, d in metrics.items() if d not in (HIGHER, LOWER)}
            if not metrics or bad:
                raise ValueError(
                    f"{where}: task {task!r} needs metrics with directions ±1, got {dict(metrics)}"
                )
        for name, table in (("delta", self.delta), ("main", self.main)):
            if set(table) != set(self.metrics):
                raise ValueError(
                    f"{where}: {name} must name every task {sorted(self.metrics)}, got {sorted(table)}"
                )
        for task, chosen in self.delta.items():
            unknown = [m for m in chosen if m not in self.metrics[task]]
            if not chosen or unknown:
                raise ValueError(f"{where}: delta metrics {chosen} of {task!r} must be some of its metrics")
        for task, metric in self.main.items():
            if metric not in self.metrics[task]:
                raise ValueError(f"{where}: main metric {metric!r} of {task!r} is not one of its metrics")
        unknown_tasks = sorted((set(self.task_names) | set(self.names)) - set(self.metrics))
        if unknown_tasks:
            raise ValueError(f"{where}: display names for tasks {unknown_tasks} it does not have")
        for task, names in self.names.items():
            extra = sorted(set(names) - set(self.metrics[task]))
            if extra:
                raise ValueError(f"{where}: display names for metrics {extra} that {task!r} does not have")
            for metric, name in names.items():
                if not isinstance(name, MetricName) or not math.isfinite(name.scale) or name.scale <= 0:
                    raise ValueError(
                        f"{where}: name of {task}.{metric} must be a MetricName with a positive scale, "
                        f"got {name!r}"
                    )

    def metric_name(self, task: str, metric: str) -> MetricName:
        """The display name of ``<task>.<metric>``; the metric's own name when the vocabulary gives none."""
        return self.names.get(task, {}).get(metric) or MetricName(metric)


# The union over the registered vocabularies, kept up to date in place by register_vocabulary.
METRICS: dict[str, dict[str, dict[str, int]]] = {}  # dataset → task → metric → direction
DELTA_METRICS: dict[str, dict[str, tuple[str, ...]]] = {}  # dataset → task → ΔT/Δm metrics
DIRECTIONS: dict[str, int] = {}  # "<task>.<metric>" → direction, over every dataset
MAIN_METRIC: dict[str, str] = {}  # task → main metric, over every dataset
TASKS: list[str] = []  # every task of a registered dataset, in registration order
VOCABULARIES: dict[str, Vocabulary] = {}  # dataset → its registered vocabulary (display names, units)
TASK_NAMES: dict[str, str] = {}  # task → short display name, over every dataset


def register_vocabulary(vocabulary: Vocabulary) -> Vocabulary:
    """Add a dataset's vocabulary. A column whose direction, or a task whose main metric, differs from another
    dataset's is an error: one column name means one thing in every table."""
    name = vocabulary.dataset
    if name in METRICS:
        if METRICS[name] == {t: dict(m) for t, m in vocabulary.metrics.items()}:
            return vocabulary  # the same declaration imported twice
        raise ValueError(f"a different vocabulary for dataset {name!r} is already registered")
    for task, metrics in vocabulary.metrics.items():
        for metric, sign in metrics.items():
            column = f"{task}.{metric}"
            if DIRECTIONS.get(column, sign) != sign:
                raise ValueError(f"dataset {name!r}: column {column!r} has the opposite direction elsewhere")
        if MAIN_METRIC.get(task, vocabulary.main[task]) != vocabulary.main[task]:
            raise ValueError(
                f"dataset {name!r}: main metric {vocabulary.main[task]!r} of {task!r} differs from "
                f"{MAIN_METRIC[task]!r} of another dataset"
            )
    for task, shown in vocabulary.task_names.items():
        if TASK_NAMES.get(task, shown) != shown:
            raise ValueError(
                f"dataset {name!r}: task {task!r} is shown as {shown!r}, another dataset shows it as "
                f"{TASK_NAMES[task]!r}"
            )
    VOCABULARIES[name] = vocabulary
    TASK_NAMES.update(vocabulary.task_names)
    METRICS[name] = {t: dict(m) for t, m in vocabulary.metrics.items()}
    DELTA_METRICS[name] = {t: tuple(m) for t, m in vocabulary.delta.items()}
    for task, metrics in vocabulary.metrics.items():
        DIRECTIONS.update({f"{task}.{m}": d for m, d in metrics.items()})
        MAIN_METRIC[task] = vocabulary.main[task]
        if task not in TASKS:
            TASKS.append(task)
    return vocabulary


def load_vocabularies() -> None:
    """Import the built-in vocabularies and the ``mtlprune.vocabularies`` entry points (each registers)."""
    importlib.import_module(BUILTIN_VOCABULARIES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party vocabulary must say which one
            raise ImportError(
                f"vocabulary entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
            ) from exc


def direction(column: str) -> int:
    """Direction (+1 higher-is-better, -1 lower-is-better) of a ``<task>.<metric>`` column of any dataset."""
    try:
        return DIRECTIONS[column]
    except KeyError:
        raise KeyError(f"unknown metric column {column!r}; known: {', '.join(sorted(DIRECTIONS))}") from None


def delta_metrics(dataset: str) -> dict[str, tuple[str, ...]]:
    """Task → the metric names that ΔT/Δm use for ``dataset``."""
    try:
        return DELTA_METRICS[dataset]
    except KeyError:
        raise KeyError(
            f"no ΔT metric set for dataset {dataset!r}; known: {', '.join(DELTA_METRICS)}"
        ) from None


def dataset_metrics(dataset: str) -> dict[str, dict[str, int]]:
    """The task → metric → direction table of one dataset, with a clear error for an unknown dataset."""
    try:
        return METRICS[dataset]
    except KeyError:
        raise KeyError(f"no metric vocabulary for dataset {dataset!r}; known: {', '.join(METRICS)}") from None


def metric_name(column: str, dataset: str | None = None) -> MetricName:
    """Display name of a ``<task>.<metric>`` column: from ``dataset``'s vocabulary, else from the first
    registered dataset that names the column (one column means one thing everywhere; units may still differ
    between datasets, so pass ``dataset`` when known), else the metric's own name."""
    task, _, metric = column.partition(".")
    candidates = [VOCABULARIES[dataset]] if dataset in VOCABULARIES else []
    candidates += list(VOCABULARIES.values())
    for vocabulary in candidates:
        if metric in vocabulary.names.get(task, {}):
            return vocabulary.names[task][metric]
    return MetricName(metric)


def task_name(task: str) -> str:
    """Short display name of a task (``Seg``), the task itself when no vocabulary names it."""
    return TASK_NAMES.get(task, task)


def dataset_title(dataset: str) -> str:
    """Display name of a dataset (``NYU-v2``), the dataset name itself when its vocabulary gives none."""
    vocabulary = VOCABULARIES.get(dataset)
    return vocabulary.title if vocabulary is not None and vocabulary.title else dataset


load_vocabularies()  # after the definitions above: the vocabulary modules import them
