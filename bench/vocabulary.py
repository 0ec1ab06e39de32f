"""Task and metric names, torch-free so the analysis layer can use them (docs/protocols.md).

Every metric column is ``<task>.<metric>``; its direction is +1 when higher is better and -1 when lower is
better. A dataset plugin declares its `Vocabulary` (its tasks' metrics with directions, the subset that
enters ΔT/Δm, each task's main metric) and registers it with :func:`register_vocabulary`; the tables below are
the union over the registered datasets, and ΔT/Δm and every table read directions from here and nowhere
else. The built-in datasets' vocabularies (``mtlprune.datasets.vocabularies``) and those of the
``mtlprune.vocabularies`` entry-point group load on import, without torch; a plugin may also register its
vocabulary when it is imported (``--plugin``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
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
class Vocabulary:
    """One dataset's metric vocabulary.

    ``metrics``: task → metric → direction, in reporting order; ``delta``: task → the metrics that enter
    ΔT/Δm; ``main``: task → the metric that summary tables and figures show first.
    """

    dataset: str
    metrics: Mapping[str, Mapping[str, int]]
    delta: Mapping[str, tuple[str, ...]]
    main: Mapping[str, str]

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


# The union over the registered vocabularies, kept up to date in place by register_vocabulary.
METRICS: dict[str, dict[str, dict[str, int]]] = {}  # dataset → task → metric → direction
DELTA_METRICS: dict[str, dict[str, tuple[str, ...]]] = {}  # dataset → task → ΔT/Δm metrics
DIRECTIONS: dict[str, int] = {}  # "<task>.<metric>" → direction, over every dataset
MAIN_METRIC: dict[str, str] = {}  # task → main metric, over every dataset
TASKS: list[str] = []  # every task of a registered dataset, in registration order


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


load_vocabularies()  # after the definitions above: the vocabulary modules import them
