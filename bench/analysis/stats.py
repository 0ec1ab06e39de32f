"""Statistics that papers print: seed intervals, paired tests with Holm, Friedman ranks with Nemenyi CD.

A benchmark claim ("method A beats B") is a statement over seeds, and cells of different methods with the
same setting and seed share one dense model, so they are paired: every comparison here resamples or
pairs *the same seeds* for all methods. The ``dense-finetune`` control (:data:`CONTROL_METHOD`) is a
reference, not a pruning method: it enters the intervals, and is a possible baseline of paired
differences, but never the ranks, tests or critical-difference diagrams. Choices and formulas: the
"Statistics" section of docs/analysis.md. Reads a `load_results` frame; never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from types import ModuleType
from typing import Literal

import numpy as np
import pandas as pd

from mtlprune.analysis.summaries import bootstrap_ci, with_bootstrap
from mtlprune.vocabulary import HIGHER, direction

__all__ = [
    "CONTROL_METHOD",
    "FriedmanResult",
    "RankStability",
    "average_ranks",
    "block_values",
    "friedman_test",
    "holm",
    "is_control",
    "max_seeds_per_cell",
    "metric_sign",
    "nemenyi_cd",
    "nemenyi_q",
    "paired_differences",
    "pairwise_tests",
    "rank_stability",
    "seed_intervals",
]

CONTROL_METHOD = "dense-finetune"  # spec.CONTROL_METHOD, not imported: analysis stays free of pydantic
DONE = "done"
# What a cell's setting is (the keys a frame has of these); blocks add the target and the seed.
SETTING_KEYS: tuple[str, ...] = ("dataset", "tasks", "arch", "width", "head_width", "protocol")
BlockBy = Literal["seed", "target"]
BLOCK_BY: tuple[str, ...] = ("seed", "target")
TESTS: tuple[str, ...] = ("wilcoxon", "ttest")
# Below this many pairs a two-sided Wilcoxon test cannot reach p < 0.05 (its smallest p is 2 / 2^n).
MIN_WILCOXON_PAIRS = 6


# ------------------------------------------------------------------------------------------ helpers


def _scipy_stats() -> ModuleType:
    """scipy.stats, imported on first use: it would double the import time of ``mtlprune.analysis``."""
    from scipy import stats

    return stats


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise KeyError(
            f"{what} needs the load_results columns {missing}; the frame has {list(frame.columns)}"
        )


def _setting_keys(frame: pd.DataFrame) -> list[str]:
    return [k for k in SETTING_KEYS if k in frame]


def metric_sign(metric: str) -> int:
    """+1 when higher is better: ΔT/Δm (per task ``delta_t.<task>``, against the control ``delta_t_control``)
    by definition, else the vocabulary's direction (``KeyError`` for a column it does not know)."""
    if metric.startswith(("delta_t", "delta_m")):
        return HIGHER
    return direction(metric)


def is_control(frame: pd.DataFrame) -> pd.Series:
    """Rows of the ``dense-finetune`` control (by ``method_name`` where the frame has it, else the label)."""
    names = (
        frame["method_name"] if "method_name" in frame else frame["method"].astype(str).str.split("(").str[0]
    )
    return names.astype(str).eq(CONTROL_METHOD)


def _runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs (published rows have no seeds and no shared dense model)."""
    return frame[frame["status"].astype(str) != "published"]


def _methods(frame: pd.DataFrame, methods: Sequence[str] | None) -> list[str]:
    """The compared methods: ``methods`` as given, else every non-control method label, sorted."""
    runs = _runs(frame)
    present = set(runs.loc[~is_control(runs), "method"].astype(str))
    if methods is None:
        return sorted(present)
    chosen = list(dict.fromkeys(str(m) for m in methods))
    unknown = [m for m in chosen if m not in set(runs["method"].astype(str))]
    if unknown:
        raise KeyError(
            f"method(s) {unknown} not in the frame; it has {sorted(set(runs['method'].astype(str)))}"
        )
    controls = [m for m in chosen if m not in present]
    if controls:
        raise ValueError(f"{controls}: the {CONTROL_METHOD} control is not ranked or tested against methods")
    return chosen


def _values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The metric of finished rows as floats (NaN where a finished cell has none, e.g. ΔT undefined)."""
    return pd.to_numeric(rows[metric], errors="coerce").astype(float)


def _check(metric: str, block_by: str, frame: pd.DataFrame, what: str) -> None:
    _require(frame, ["method", "status", "seed", "target_sparsity", metric], what)
    if block_by not in BLOCK_BY:
        raise ValueError(f"block_by must be one of {BLOCK_BY}, got {block_by!r}")
    metric_sign(metric)  # an unknown metric fails here, before any work


def max_seeds_per_cell(frame: pd.DataFrame) -> int:
    """The most finished seeds of any pruning cell (control excluded): below 2, no significance statement."""
    _require(frame, ["method", "status", "target_sparsity", "seed"], "max_seeds_per_cell")
    done = frame[(frame["status"] == DONE) & ~is_control(frame)]
    if done.empty:
        return 0
    keys = [*_setting_keys(done), "method", "target_sparsity"]
    return int(done.groupby(keys, dropna=False)["seed"].nunique().max())


# -------------------------------------------------------------------------------- seed intervals


def seed_intervals(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and percentile-bootstrap interval over seeds, per setting × method × target sparsity.

    Each cell's finished seeds (status ``done``), in seed order, go through
    :func:`mtlprune.analysis.summaries.bootstrap_ci` with the same NumPy ``seed``: cells with the same number
    of seeds draw the same seed indices, so the intervals of methods of one setting resample the same
    seeds. Published rows are left out (no seeds); the control's cells are kept and flagged.

    Columns: the setting keys the frame has (dataset, tasks, arch, width, head_width, protocol), ``method``,
    ``target_sparsity``, ``control`` (True for ``dense-finetune``), ``n_seeds`` (finished seeds),
    ``n_failed``, ``n_missing`` (pending, running, never started), ``mean`` (NaN when no seed finished or a
    finished seed has no value), ``ci_low``, ``ci_high`` (the ``level`` interval; equal to the mean with
    one seed or equal values). ``attrs``: metric, level, n_resamples, seed.
    """
    _require(frame, ["method", "status", "seed", "target_sparsity", metric], "seed_intervals")
    runs = _runs(frame).sort_values("seed", kind="stable")
    keys = [*_setting_keys(runs), "method", "target_sparsity"]
    columns = [*keys, "control", "n_seeds", "n_failed", "n_missing", "mean", "ci_low", "ci_high"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    cells = with_bootstrap(runs, metric, n_resamples=n_resamples, level=level, seed=seed)
    cells = cells.rename(columns={f"{metric}.{s}": s for s in ("mean", "ci_low", "ci_high")})
    cells["control"] = is_control(cells).to_numpy()
    out = cells.sort_values(keys)[columns].reset_index(drop=True)
    out.attrs.update(metric=metric, level=level, n_resamples=n_resamples, seed=seed)
    return out


def _seed_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished run rows: setting keys, target_sparsity, seed, method, value (one row per cell and seed)."""
    runs = _runs(frame)
    done = runs[runs["status"] == DONE]
    keys = [*_setting_keys(runs), "target_sparsity", "seed"]
    out = done[[*keys, "method"]].copy()
    out["method"] = out["method"].astype(str)
    out["control"] = is_control(done).to_numpy()
    out["value"] = _values(done, metric).to_numpy()
    duplicated = out.duplicated([*keys, "method"])
    if duplicated.any():
        first = out[duplicated].iloc[0]
        raise ValueError(f"two finished rows of one cell and seed: {first[[*keys, 'method']].to_dict()}")
    return out


def paired_differences(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    baseline: str | None = None,
    methods: Sequence[str] | None = None,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired-bootstrap interval of the mean difference between two methods, per setting and target.

    For methods A and B of one setting and target, the seeds where both finished with a finite value are
    paired (they share the dense model of that seed) and d_s = A_s − B_s is resampled over seeds with
    :func:`mtlprune.analysis.summaries.bootstrap_ci`: the same seeds are drawn for both methods, so the seed's
    common part cancels. Two methods that differ by a constant give the zero-width interval (c, c).
    ``baseline=None`` compares every pair of non-control methods (A before B by name); a ``baseline``
    compares every other method A with it (B = baseline). With ``baseline="dense-finetune"`` the control
    cell of the same setting and seed (target 0) is paired with every target.

    Columns: the setting keys, ``target_sparsity``, ``method_a``, ``method_b``, ``n_pairs`` (paired seeds),
    ``mean_a``, ``mean_b`` (means over the paired seeds), ``diff_mean`` (mean of A − B in the metric's
    unit; positive means A is higher, which is better for ΔT), ``ci_low``, ``ci_high`` (NaN without a
    pair), ``excludes_zero`` (the interval lies strictly on one side of 0). ``attrs``: metric, level,
    n_resamples, seed, baseline.
    """
    _check(metric, "seed", frame, "paired_differences")
    table = _seed_table(frame, metric)
    table = table[np.isfinite(table["value"])]
    setting = _setting_keys(frame)
    compared = _methods(frame, methods)
    control_baseline = False
    if baseline is not None:
        known = set(_runs(frame)["method"].astype(str))
        if baseline not in known:
            raise KeyError(f"baseline {baseline!r} not in the frame; it has {sorted(known)}")
        control_baseline = bool(is_control(pd.DataFrame({"method": [baseline]})).iloc[0])
        pairs = [(m, baseline) for m in compared if m != baseline]
    else:
        pairs = list(combinations(compared, 2))
    keys = [*setting, "target_sparsity", "seed"]
    pruned = table[~table["control"]]
    wide = pruned.pivot(index=keys, columns="method", values="value") if len(pruned) else pd.DataFrame()
    if control_baseline:
        ctrl = table[table["method"] == baseline].set_index([*setting, "seed"])["value"]
    rows = []
    blocks = wide.groupby(level=[*setting, "target_sparsity"], sort=True, dropna=False) if len(wide) else []
    for block, group in blocks:
        block_keys = dict(zip([*setting, "target_sparsity"], block, strict=True))
        group = group.sort_index(level="seed")
        for a, b in pairs:
            if a not in group:
                continue
            values_a = group[a]
            if control_baseline:
                index = pd.MultiIndex.from_arrays(
                    [group.index.get_level_values(k) for k in [*setting, "seed"]], names=[*setting, "seed"]
                )
                values_b = pd.Series(ctrl.reindex(index).to_numpy(), index=group.index)
            elif b in group:
                values_b = group[b]
            else:
                continue
            both = values_a.notna() & values_b.notna()
            if not (values_a.notna().any() or values_b.notna().any()):
                continue
            va, vb = values_a[both].to_numpy(), values_b[both].to_numpy()
            low = high = math.nan
            if both.any():
                low, high = bootstrap_ci(va - vb, n_resamples=n_resamples, level=level, seed=seed)
            rows.append(
                {
                    **block_keys,
                    "method_a": a,
                    "method_b": b,
                    "n_pairs": int(both.sum()),
                    "mean_a": float(va.mean()) if both.any() else math.nan,
                    "mean_b": float(vb.mean()) if both.any() else math.nan,
                    "diff_mean": float((va - vb).mean()) if both.any() else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "excludes_zero": bool(low > 0 or high < 0),
                }
            )
    columns = [*setting, "target_sparsity", "method_a", "method_b", "n_pairs", "mean_a", "mean_b"]
    out = pd.DataFrame(rows, columns=[*columns, "diff_mean", "ci_low", "ci_high", "excludes_zero"])
    out.attrs.update(metric=metric, level=level, n_resamples=n_resamples, seed=seed, baseline=baseline)
    return out


# ---------------------------------------------------------------------------------------- blocks


def _reasons(row: pd.Series, finished: pd.Series) -> str:
    """Why a block is incomplete: the methods without a finished cell, and those whose value is not finite."""
    absent = [m for m in row.index if not finished.get(m, False)]
    nonfinite = [m for m in row.index if finished.get(m, False) and not np.isfinite(row[m])]
    parts = []
    if absent:
        parts.append("no finished cell of " + ", ".join(absent))
    if nonfinite:
        parts.append("no finite value of " + ", ".join(nonfinite))
    return "; ".join(parts)


def block_values(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    block_by: BlockBy = "seed",
    methods: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, dropped): the complete blocks × methods, and the blocks left out with the reason.

    A block is one setting (dataset, tasks, arch, widths, protocol), one target sparsity and one seed
    (``block_by="seed"``, default); it is complete when every compared method has a finished cell with a
    finite value there. ``block_by="target"`` blocks by (setting, target) instead, on the mean over the
    seeds that are complete in it (so every method is averaged over the same seeds); a (setting, target)
    with no complete seed is dropped. The control and published rows never enter.

    ``values``: index = the block keys (setting keys, ``target_sparsity``, and ``seed`` when blocking by
    seed), one float column per method (in ``methods`` order, default sorted). ``dropped``: one row per
    incomplete (setting, target, seed) — the block keys, ``seed``, and ``reason`` ("no finished cell of
    A, B" for failed, pending, running or missing cells, "no finite value of C" for a NaN metric); with
    ``block_by="target"`` also seeds dropped from blocks that were kept. ``dropped.attrs["n_blocks"]`` is
    the number of whole blocks (of ``block_by``) left out.
    """
    _check(metric, block_by, frame, "block_values")
    compared = _methods(frame, methods)
    setting = _setting_keys(frame)
    seed_keys = [*setting, "target_sparsity", "seed"]
    runs = _runs(frame)
    runs = runs[runs["method"].astype(str).isin(compared)]
    # Every (setting, target, seed) where a compared method has a row (any status) is a block.
    index = pd.MultiIndex.from_frame(runs[seed_keys].drop_duplicates())
    table = _seed_table(runs, metric)
    full = pd.DataFrame(math.nan, index=index, columns=compared, dtype=float)
    finished = pd.DataFrame(False, index=index, columns=compared)
    if not table.empty:
        full = table.pivot(index=seed_keys, columns="method", values="value").reindex(
            index=index, columns=compared
        )
        present = table.assign(_one=1.0).pivot(index=seed_keys, columns="method", values="_one")
        finished = present.reindex(index=index, columns=compared).notna()
    complete = np.isfinite(full.to_numpy(dtype=float)).all(axis=1)
    dropped_rows = [
        {
            **dict(zip(seed_keys, full.index[i], strict=True)),
            "reason": _reasons(full.iloc[i], finished.iloc[i]),
        }
        for i in np.flatnonzero(~complete)
    ]
    dropped = pd.DataFrame(dropped_rows, columns=[*seed_keys, "reason"])
    kept = full[complete].astype(float).sort_index()
    if block_by == "seed":
        dropped.attrs["n_blocks"] = len(dropped)
        return kept, dropped
    target_keys = [*setting, "target_sparsity"]
    values = kept.groupby(level=target_keys, dropna=False).mean()
    dropped.attrs["n_blocks"] = len(index.droplevel("seed").unique()) - len(values)
    return values, dropped


def _ranks(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rank within each block (row): 1 = best, ties share the average rank."""
    return values.mul(metric_sign(metric)).rank(axis=1, ascending=False, method="average")


def average_ranks(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    block_by: BlockBy = "seed",
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean rank of each method over the complete blocks (1 = best; ties get the average of their ranks).

    Blocks and the complete-block rule: :func:`block_values`. The metric's direction comes from
    :func:`mtlprune.vocabulary.direction` (ΔT and Δm: higher is better). Columns: ``method``, ``mean_rank``,
    ``n_blocks`` (complete blocks, the same for every method), ``mean_value`` (the metric's mean over those
    blocks), ``wins`` (blocks where the method has rank 1, shared ranks included); rows by mean rank.
    ``attrs``: metric, block_by, n_dropped (whole blocks left out).
    """
    values, dropped = block_values(frame, metric, block_by=block_by, methods=methods)
    return _average_ranks(values, dropped, metric, block_by)


def _average_ranks(values: pd.DataFrame, dropped: pd.DataFrame, metric: str, block_by: str) -> pd.DataFrame:
    ranks = _ranks(values, metric)
    out = pd.DataFrame(
        {
            "method": list(values.columns),
            "mean_rank": ranks.mean(axis=0).to_numpy(dtype=float) if len(ranks) else math.nan,
            "n_blocks": len(values),
            "mean_value": values.mean(axis=0).to_numpy(dtype=float) if len(values) else math.nan,
            "wins": (ranks <= 1.0).sum(axis=0).to_numpy(dtype=int) if len(ranks) else 0,
        }
    )
    out = out.sort_values(["mean_rank", "method"], kind="stable").reset_index(drop=True)
    out.attrs.update(metric=metric, block_by=block_by, n_dropped=int(dropped.attrs["n_blocks"]))
    return out


# ------------------------------------------------------------------------------- Friedman / Nemenyi


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_α of the Nemenyi test: the studentized range quantile at (1 − α, k, ∞) divided by √2."""
    if k < 2:
        raise ValueError(f"the Nemenyi test needs at least 2 methods, got {k}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(_scipy_stats().studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Critical difference of mean ranks (Demšar 2006): CD = q_α · sqrt(k (k + 1) / (6 N))."""
    if n_blocks < 1:
        raise ValueError(f"the critical difference needs at least one block, got {n_blocks}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def _friedman(ranks: np.ndarray) -> tuple[float, float]:
    """Friedman χ² on an N × k rank matrix, tie-corrected as scipy.stats.friedmanchisquare; its p."""
    n, k = ranks.shape
    mean_ranks = ranks.mean(axis=0)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    correction = 1.0 - ties / (n * k * (k * k - 1))
    if correction <= 0:  # every block is one big tie: no order to test
        return math.nan, math.nan
    chi2 = 12.0 * n / (k * (k + 1)) * (float((mean_ranks**2).sum()) - k * (k + 1) ** 2 / 4.0) / correction
    return chi2, float(_scipy_stats().chi2.sf(chi2, k - 1))


@dataclass(frozen=True, eq=False)
class FriedmanResult:
    """Friedman test over complete blocks, with the Nemenyi critical difference of the mean ranks.

    ``ranks`` is :func:`average_ranks`'s frame; ``dropped`` :func:`block_values`'s. ``statistic`` is
    Friedman's χ² (k − 1 degrees of freedom, tie-corrected), ``iman_davenport`` the F of Iman and Davenport
    ((k − 1, (k − 1)(N − 1)) degrees of freedom; NaN for one block), ``cd`` the Nemenyi critical
    difference at ``alpha``: two methods whose mean ranks differ by at least ``cd`` differ significantly.
    """

    metric: str
    block_by: str
    ranks: pd.DataFrame
    dropped: pd.DataFrame
    n_blocks: int
    n_dropped: int
    statistic: float
    p_value: float
    iman_davenport: float
    iman_davenport_p: float
    alpha: float
    q_alpha: float
    cd: float

    @property
    def k(self) -> int:
        return len(self.ranks)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.ranks["method"])

    def cliques(self) -> list[tuple[str, ...]]:
        """Maximal runs of methods (in rank order) whose mean ranks differ by less than the CD."""
        ordered = self.ranks.sort_values("mean_rank", kind="stable")
        names, ranks = list(ordered["method"]), ordered["mean_rank"].to_numpy(dtype=float)
        out: list[tuple[int, int]] = []
        for i in range(len(names)):
            j = i
            while j + 1 < len(names) and ranks[j + 1] - ranks[i] < self.cd:
                j += 1
            if j > i and not any(a <= i and j <= b for a, b in out):
                out.append((i, j))
        return [tuple(names[a : b + 1]) for a, b in out]


def friedman_test(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    block_by: BlockBy = "seed",
    methods: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> FriedmanResult:
    """Friedman test of the methods' ranks over complete blocks, Iman–Davenport F, and the Nemenyi CD.

    Blocks, the complete-block rule and ranks: :func:`block_values`, :func:`average_ranks`. Needs at
    least two methods and one complete block (``ValueError`` otherwise, with how many blocks were dropped).
    """
    values, dropped = block_values(frame, metric, block_by=block_by, methods=methods)
    ranks_frame = _average_ranks(values, dropped, metric, block_by)
    k, n = values.shape[1], values.shape[0]
    if k < 2:
        raise ValueError(f"ranking needs at least two methods (control excluded), got {list(values.columns)}")
    if n < 1:
        raise ValueError(
            f"no complete block (every method finished with a finite {metric}); "
            f"{dropped.attrs['n_blocks']} block(s) dropped"
        )
    chi2, p = _friedman(_ranks(values, metric).to_numpy(dtype=float))
    f_stat = f_p = math.nan
    if n > 1 and math.isfinite(chi2):
        denominator = n * (k - 1) - chi2
        f_stat = (n - 1) * chi2 / denominator if denominator > 0 else math.inf
        f_p = float(_scipy_stats().f.sf(f_stat, k - 1, (k - 1) * (n - 1))) if math.isfinite(f_stat) else 0.0
    q = nemenyi_q(k, alpha)
    return FriedmanResult(
        metric=metric,
        block_by=block_by,
        ranks=ranks_frame,
        dropped=dropped,
        n_blocks=n,
        n_dropped=int(dropped.attrs["n_blocks"]),
        statistic=chi2,
        p_value=p,
        iman_davenport=f_stat,
        iman_davenport_p=f_p,
        alpha=alpha,
        q_alpha=q,
        cd=q * math.sqrt(k * (k + 1) / (6.0 * n)),
    )


# ------------------------------------------------------------------------------------ paired tests


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN stays NaN and is not counted in m.

    Sorted ascending, p_(i) becomes max over j ≤ i of min(1, (m − j + 1) · p_(j)) (1-based), so the
    adjusted values keep the order of the raw ones; reject where the adjusted p is below α.
    """
    p = np.asarray(list(p_values), dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return out


def _paired_long(frame: pd.DataFrame, metric: str, methods: list[str]) -> pd.DataFrame:
    """Finished finite values of the compared methods: setting keys, target, seed, method, value."""
    table = _seed_table(_runs(frame)[lambda f: f["method"].astype(str).isin(methods)], metric)
    return table[np.isfinite(table["value"])]


def pairwise_tests(
    frame: pd.DataFrame,
    metric: str = "delta_t",
    *,
    block_by: BlockBy = "seed",
    test: Literal["wilcoxon", "ttest"] = "wilcoxon",
    methods: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired test for every pair of methods over their common blocks, Holm-adjusted across the pairs.

    A pair uses every block (setting, target, seed; or setting, target on the means over the seeds both
    finished, ``block_by="target"``) where both methods finished with a finite value, so ``n_pairs`` may
    differ between pairs. ``test="wilcoxon"`` (default): ``scipy.stats.wilcoxon``, two-sided, zero
    differences split between the signed-rank sums (``zero_method="zsplit"``, Demšar's advice); scipy's
    ``method="auto"`` takes the exact null distribution without ties or zeros, an exhaustive sign-flip
    permutation for n ≤ 13 with them, the normal approximation beyond. All differences zero gives p = 1.
    ``test="ttest"``: ``scipy.stats.ttest_rel``. The control never enters.

    Columns: ``method_a``, ``method_b`` (A before B by name), ``n_pairs``, ``n_zero`` (zero differences),
    ``mean_diff`` (mean of A − B in the metric's unit), ``wins_a`` / ``wins_b`` (blocks where A / B is
    better, direction-aware), ``statistic`` (Wilcoxon: the smaller of the two signed-rank sums; or
    t), ``p_value`` (NaN without a pair, or for a t-test on fewer than two pairs or constant differences),
    ``p_holm`` (Holm over the pairs with a p-value), ``reject`` (p_holm < alpha), ``note`` (why a p is
    missing, or that fewer than 6 pairs cannot reach p < 0.05 with Wilcoxon). ``attrs``: metric,
    block_by, test, alpha.
    """
    _check(metric, block_by, frame, "pairwise_tests")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    compared = _methods(frame, methods)
    long = _paired_long(frame, metric, compared)
    setting = _setting_keys(frame)
    keys = [*setting, "target_sparsity", "seed"]
    if long.empty:
        wide = pd.DataFrame(columns=compared, index=pd.MultiIndex.from_tuples([], names=keys), dtype=float)
    else:
        wide = long.pivot(index=keys, columns="method", values="value").reindex(columns=compared)
    sign = metric_sign(metric)
    rows = []
    for a, b in combinations(compared, 2):
        both = wide[[a, b]].dropna()
        if block_by == "target" and len(both):
            both = both.groupby(level=[*setting, "target_sparsity"], dropna=False).mean()
        diff = (both[a] - both[b]).to_numpy(dtype=float)
        n = diff.size
        statistic = p = math.nan
        note = ""
        if n == 0:
            note = "no block where both finished"
        elif test == "wilcoxon":
            result = _scipy_stats().wilcoxon(diff, zero_method="zsplit", alternative="two-sided")
            statistic, p = float(result.statistic), float(result.pvalue)
            if n < MIN_WILCOXON_PAIRS:
                note = f"{n} pair(s): Wilcoxon cannot reach p < 0.05 with fewer than {MIN_WILCOXON_PAIRS}"
        elif n < 2 or np.all(diff == diff[0]):
            note = "t-test undefined: fewer than 2 pairs or constant differences"
        else:
            result = _scipy_stats().ttest_rel(both[a], both[b])
            statistic, p = float(result.statistic), float(result.pvalue)
        rows.append(
            {
                "method_a": a,
                "method_b": b,
                "n_pairs": n,
                "n_zero": int((diff == 0).sum()),
                "mean_diff": float(diff.mean()) if n else math.nan,
                "wins_a": int((sign * diff > 0).sum()),
                "wins_b": int((sign * diff < 0).sum()),
                "statistic": statistic,
                "p_value": p,
                "note": note,
            }
        )
    columns = ["method_a", "method_b", "n_pairs", "n_zero", "mean_diff", "wins_a", "wins_b", "statistic"]
    out = pd.DataFrame(rows, columns=[*columns, "p_value", "note"])
    out["p_holm"] = holm(out["p_value"]) if len(out) else pd.Series(dtype=float)
    out["reject"] = (out["p_holm"] < alpha).astype(bool)
    out = out[[*columns, "p_value", "p_holm", "reject", "note"]]
    out.attrs.update(metric=metric, block_by=block_by, test=test, alpha=alpha)
    return out


# ---------------------------------------------------------------------------------- rank stability


@dataclass(frozen=True, eq=False)
class RankStability:
    """How much the methods' order changes from seed to seed.

    ``per_seed``: ``seed``, ``method``, ``mean_rank`` (over that seed's complete blocks), ``n_blocks``.
    ``pairs``: ``seed_a``, ``seed_b``, ``n_methods``, ``tau`` (Kendall's τ-b of the two seeds' mean
    ranks; NaN when one seed ranks every method equal), ``p_value``. ``mean_tau`` / ``min_tau`` over the
    pairs (NaN with fewer than two seeds).
    """

    metric: str
    per_seed: pd.DataFrame
    pairs: pd.DataFrame
    mean_tau: float
    min_tau: float

    @property
    def n_seeds(self) -> int:
        return int(self.per_seed["seed"].nunique()) if len(self.per_seed) else 0


def rank_stability(
    frame: pd.DataFrame, metric: str = "delta_t", *, methods: Sequence[str] | None = None
) -> RankStability:
    """Kendall's τ between the method rankings of every two seeds.

    Within each seed, the methods are ranked in every complete (setting, target) block of that seed
    (:func:`block_values` with ``block_by="seed"``) and ordered by their mean rank; a seed without a
    complete block is left out. ``scipy.stats.kendalltau`` (τ-b, ties allowed) compares two seeds' mean
    ranks: τ = 1 is the same order, −1 the reverse.
    """
    values, _ = block_values(frame, metric, block_by="seed", methods=methods)
    ranks = _ranks(values, metric)
    per_seed_rows = []
    means: dict[object, pd.Series] = {}
    for seed, group in ranks.groupby(level="seed", sort=True):
        mean = group.mean(axis=0)
        means[seed] = mean
        per_seed_rows += [
            {"seed": seed, "method": m, "mean_rank": float(mean[m]), "n_blocks": len(group)}
            for m in mean.index
        ]
    pair_rows = []
    for sa, sb in combinations(sorted(means), 2):
        result = _scipy_stats().kendalltau(means[sa].to_numpy(), means[sb].to_numpy())
        pair_rows.append(
            {
                "seed_a": sa,
                "seed_b": sb,
                "n_methods": len(means[sa]),
                "tau": float(result.statistic),
                "p_value": float(result.pvalue),
            }
        )
    pairs = pd.DataFrame(pair_rows, columns=["seed_a", "seed_b", "n_methods", "tau", "p_value"])
    taus = pairs["tau"].dropna()
    return RankStability(
        metric=metric,
        per_seed=pd.DataFrame(per_seed_rows, columns=["seed", "method", "mean_rank", "n_blocks"]),
        pairs=pairs,
        mean_tau=float(taus.mean()) if len(taus) else math.nan,
        min_tau=float(taus.min()) if len(taus) else math.nan,
    )
