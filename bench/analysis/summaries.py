"""Summaries beyond mean ± std: bootstrap intervals, area under the ΔT–sparsity curve, Pareto dominance.

All three read a `load_results` frame and use only finished cells (status ``done``); published rows are
single printed numbers, with no seeds to resample and no curve. As in `mtlprune.analysis.seeds.aggregate`, a
NaN in one seed makes the cell's statistic NaN: a diverged seed must not vanish into a partial mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from mtlprune.analysis.seeds import FAILED, GROUP_KEYS, MEASURED, OPTIONAL_KEYS
from mtlprune.vocabulary import DIRECTIONS, MAIN_METRIC

__all__ = ["bootstrap_ci", "delta_t_auc", "pareto_dominated", "with_bootstrap"]

DONE = "done"
# A curve or a Pareto comparison is only meaningful among cells of one setting and evaluation protocol.
SETTING_KEYS: list[str] = ["dataset", "tasks", "arch", "protocol"]
SIZE_KEYS: list[str] = ["width", "head_width"]


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise KeyError(f"{what} needs the columns {missing}; the frame has {list(frame.columns)}")


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    try:
        return pd.to_numeric(frame[column]).astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"column {column!r} holds non-numeric values: {exc}") from None


def _strict_mean(values: pd.Series) -> float:
    """Mean that is NaN when any value is NaN (or there is none)."""
    return math.nan if values.empty or values.isna().any() else float(values.mean())


def bootstrap_ci(
    values: Iterable[float], n_resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (one value per seed).

    Draws ``n_resamples`` resamples with replacement (NumPy ``default_rng(seed)``, so the interval is
    reproducible) and returns the (1 − level)/2 and (1 + level)/2 quantiles of their means. One value, or
    all values equal, gives the degenerate interval (v, v). A NaN or infinite value gives (NaN, NaN), like
    the NaN mean of ``aggregate``. No value at all raises ``ValueError``: there is nothing to resample.
    With few seeds the interval is narrow-biased (it cannot reach past the extreme seeds); it describes the
    seeds at hand, not a population.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    sample = np.asarray(list(values), dtype=float).ravel()
    if sample.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    if not np.isfinite(sample).all():
        return math.nan, math.nan
    if np.all(sample == sample[0]):
        return float(sample[0]), float(sample[0])
    rng = np.random.default_rng(seed)
    means = sample[rng.integers(0, sample.size, size=(n_resamples, sample.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _cell_keys(frame: pd.DataFrame) -> list[str]:
    return list(GROUP_KEYS) + [c for c in OPTIONAL_KEYS if c in frame]


def with_bootstrap(
    frame: pd.DataFrame, metric: str, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per cell: ``n_seeds``, ``n_failed``, ``n_missing``, ``<metric>.mean``, ``.ci_low``, ``.ci_high``.

    Cells are those of ``aggregate`` (finished rows: ``done`` or ``published``); a cell with no finished
    seed keeps its row with NaN statistics. The interval is :func:`bootstrap_ci` of its seeds' values.
    """
    _require(frame, [*GROUP_KEYS, "status", metric], "with_bootstrap")
    keys = _cell_keys(frame)
    rows = []
    for key, cell in frame.groupby(keys, sort=False, dropna=False):
        status = cell["status"]
        finished = _numeric(cell[status.isin(MEASURED)], metric)
        n_failed = int((status == FAILED).sum())
        low = high = math.nan
        if not finished.empty:
            low, high = bootstrap_ci(finished, n_resamples=n_resamples, level=level, seed=seed)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_seeds": len(finished),
                "n_failed": n_failed,
                "n_missing": len(cell) - len(finished) - n_failed,
                f"{metric}.mean": _strict_mean(finished),
                f"{metric}.ci_low": low,
                f"{metric}.ci_high": high,
            }
        )
    columns = [
        *keys,
        "n_seeds",
        "n_failed",
        "n_missing",
        *(f"{metric}.{s}" for s in ("mean", "ci_low", "ci_high")),
    ]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs.update(level=level, n_resamples=n_resamples, seed=seed)
    return out


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def delta_t_auc(frame: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Area under each method's curve of mean ΔT against mean achieved sparsity, per setting.

    For each (dataset, tasks, arch, protocol, width, head_width) and ``by`` value, each target sparsity
    gives one point: x = mean achieved sparsity, y = mean ΔT over the finished seeds (NaN if a finished seed
    has no ΔT). The points with values, sorted by x, are joined by the trapezoid rule over the method's own
    targets only (no anchor at the dense point). Columns: the keys, ``n_targets`` (targets the frame has
    for it, finished or not), ``n_points`` (targets with a value), ``sparsity_min``/``sparsity_max``,
    ``auc`` (in ΔT % × sparsity fraction), ``auc_normalised`` = auc / (sparsity_max − sparsity_min), the
    mean ΔT over the covered range, and ``complete`` (every target has a point). Fewer than two points, or
    no spread in sparsity, give NaN areas. Compare ``auc`` only between methods that cover the same range;
    ``auc_normalised`` is the fairer number when ranges differ, but still says nothing outside the range.
    """
    _require(
        frame, [*SETTING_KEYS, "status", "target_sparsity", "achieved_sparsity", "delta_t", by], "delta_t_auc"
    )
    keys = [*SETTING_KEYS, *(c for c in SIZE_KEYS if c in frame)]
    keys = [k for k in keys if k != by] + [by]
    rows = []
    for key, cell in frame.groupby(keys, sort=False, dropna=False):
        done = cell[cell["status"] == DONE]
        points = []
        for _, seeds in done.groupby("target_sparsity", sort=True):
            x = _strict_mean(_numeric(seeds, "achieved_sparsity"))
            y = _strict_mean(_numeric(seeds, "delta_t"))
            if math.isfinite(x) and math.isfinite(y):
                points.append((x, y))
        points.sort()
        xs = np.array([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        n_targets = int(cell["target_sparsity"].nunique())
        low, high = (float(xs[0]), float(xs[-1])) if points else (math.nan, math.nan)
        auc = _trapezoid(xs, ys) if len(points) >= 2 and high > low else math.nan
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_targets": n_targets,
                "n_points": len(points),
                "sparsity_min": low,
                "sparsity_max": high,
                "auc": auc,
                "auc_normalised": auc / (high - low) if math.isfinite(auc) else math.nan,
                "complete": len(points) == n_targets,
            }
        )
    columns = [
        *keys,
        "n_targets",
        "n_points",
        "sparsity_min",
        "sparsity_max",
        "auc",
        "auc_normalised",
        "complete",
    ]
    return pd.DataFrame(rows, columns=columns)


def _main_metrics(tasks: str) -> list[str]:
    return [f"{task}.{MAIN_METRIC[task]}" for task in str(tasks).split(",")]


def pareto_dominated(frame: pd.DataFrame) -> pd.DataFrame:
    """Which methods are Pareto-dominated on the tasks' main metrics at each setting and target.

    Per (dataset, tasks, arch, protocol, width, head_width, target_sparsity) and method, the means over
    finished seeds of each task's main metric (``mtlprune.vocabulary.MAIN_METRIC``). Method B dominates A when
    B is at least as good as A on every main metric and strictly better on one, direction-aware (mIoU
    higher, errors lower). Columns: the keys, ``method``, ``n_seeds``, the ``<metric>.mean`` columns,
    ``dominated`` (nullable boolean; <NA> for a cell that cannot be compared: no finished seed, or a main
    metric NaN) and ``dominated_by`` (sorted list of the dominating methods; empty when not dominated).
    Means are compared exactly, not rounded.
    """
    _require(frame, [*SETTING_KEYS, "status", "target_sparsity", "method"], "pareto_dominated")
    blocks = [*SETTING_KEYS, *(c for c in SIZE_KEYS if c in frame), "target_sparsity"]
    all_metrics: list[str] = []
    for tasks in frame["tasks"].dropna().unique():
        for column in _main_metrics(tasks):
            if column not in frame:
                raise KeyError(f"main metric column {column!r} of tasks {tasks!r} is not in the frame")
            if column not in all_metrics:
                all_metrics.append(column)
    rows = []
    for key, block in frame.groupby(blocks, sort=True, dropna=False):
        setting = dict(zip(blocks, key, strict=True))
        metrics = _main_metrics(setting["tasks"])
        signs = np.array([DIRECTIONS[m] for m in metrics], dtype=float)
        cells = []
        for method, cell in block.groupby("method", sort=True):
            done = cell[cell["status"] == DONE]
            means = {m: _strict_mean(_numeric(done, m)) for m in metrics}
            cells.append((str(method), len(done), means))
        scores = {m: np.array([v[c] for c in metrics]) * signs for m, _, v in cells}  # higher is better
        comparable = {m for m, _, _ in cells if np.isfinite(scores[m]).all()}
        for method, n_seeds, means in cells:
            row = {**setting, "method": method, "n_seeds": n_seeds}
            row.update({f"{m}.mean": means.get(m, math.nan) for m in all_metrics})
            if method not in comparable:
                row.update(dominated=pd.NA, dominated_by=[])
            else:
                mine = scores[method]
                by = sorted(
                    other
                    for other in comparable
                    if other != method and (scores[other] >= mine).all() and (scores[other] > mine).any()
                )
                row.update(dominated=bool(by), dominated_by=by)
            rows.append(row)
    columns = [*blocks, "method", "n_seeds", *(f"{m}.mean" for m in all_metrics), "dominated", "dominated_by"]
    out = pd.DataFrame(rows, columns=columns)
    out["dominated"] = out["dominated"].astype("boolean")
    return out
