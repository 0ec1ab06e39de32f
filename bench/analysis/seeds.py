"""`aggregate(df)`: mean and sample std over seeds per cell; failed and missing seeds counted, not dropped.

A benchmark number is a mean over seeds; a mean that silently averages fewer seeds than planned (because
some failed or are still pending) looks just as good as a complete one. So every group says how many rows
entered its statistics (``n_seeds``) and how many did not (``n_failed``, ``n_missing``), and a metric that is
NaN in one of the seeds (a diverged run, an undefined ΔT) gives a NaN mean rather than a partial one.
"""

from __future__ import annotations

import pandas as pd

from mtlprune.analysis.load import BASE_COLUMNS

__all__ = ["GROUP_KEYS", "aggregate"]

# One benchmark cell (`method` already encodes the method's parameters).
GROUP_KEYS: list[str] = ["dataset", "tasks", "arch", "method", "target_sparsity", "protocol"]
# Identity columns that also separate cells where a frame has them: model size, and a published row's
# source table and starting point (DiSparse's two Random rows differ only in `starts_from`).
OPTIONAL_KEYS: list[str] = ["width", "head_width", "source", "table", "starts_from", "paper_label"]
# BASE columns that identify or describe a row rather than measure it.
IDENTITY: frozenset[str] = frozenset(
    {
        "run_id",
        "dataset",
        "tasks",
        "arch",
        "width",
        "head_width",
        "method",
        "method_name",
        "target_sparsity",
        "seed",
        "protocol",
        "status",
        "error",
        "dense_run_id",
        "delta_note",
        "source",
        "table",
        "paper_label",
        "starts_from",
    }
)
# Statuses whose rows carry measured (or published) numbers.
MEASURED: frozenset[str] = frozenset({"done", "published"})
FAILED = "failed"


def _stat_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric measurement columns: BASE measures (achieved_sparsity, ΔT, costs) first, then the rest."""
    measures = [c for c in BASE_COLUMNS if c not in IDENTITY and c in frame]
    measures += [c for c in frame.columns if c not in BASE_COLUMNS and c not in IDENTITY]
    out = []
    for column in measures:
        values = frame[column].infer_objects()
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values) or values.isna().all():
            out.append(column)
    return out


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: keys, ``n_seeds``/``n_failed``/``n_missing``, then ``<col>.mean``/``<col>.std``.

    Only rows with status ``done`` or ``published`` enter the statistics; std is the sample std (ddof=1),
    NaN for a single seed. Groups that have no finished row still appear, with NaN statistics.
    """
    missing = [c for c in [*GROUP_KEYS, "status"] if c not in df]
    if missing:
        raise KeyError(f"aggregate needs the load_results columns {missing}")
    keys = GROUP_KEYS + [c for c in OPTIONAL_KEYS if c in df]
    stats = _stat_columns(df)
    status = df["status"]
    counts = pd.DataFrame(
        {
            "n_seeds": status.isin(MEASURED).astype(int),
            "n_failed": (status == FAILED).astype(int),
            "n_missing": (~status.isin(MEASURED) & (status != FAILED)).astype(int),
        }
    )
    by = [df[k] for k in keys]
    table = counts.groupby(by, sort=False, dropna=False).sum()
    if stats:
        done = df[status.isin(MEASURED)]
        values = done[stats].apply(pd.to_numeric).astype(float)
        grouped = values.groupby([done[k] for k in keys], sort=False, dropna=False)
        # A NaN in any measured seed makes the statistic NaN: a partial mean would hide a diverged seed.
        has_nan = values.isna().groupby([done[k] for k in keys], sort=False, dropna=False).any()
        mean = grouped.mean().mask(has_nan)
        std = grouped.std(ddof=1).mask(has_nan)
        parts = {}
        for column in stats:
            parts[f"{column}.mean"] = mean[column]
            parts[f"{column}.std"] = std[column]
        table = table.join(pd.DataFrame(parts, index=mean.index), how="left")
    return table.reset_index()
