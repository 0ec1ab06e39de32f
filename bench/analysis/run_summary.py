"""The end-of-run summary: method × sparsity → achieved sparsity, main metric per task, ΔT."""

from __future__ import annotations

import pandas as pd

from mtlprune.vocabulary import MAIN_METRIC


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (dataset, arch, method, target); columns as in the demo printout."""
    done = frame[frame["status"] == "done"]
    if done.empty:
        return pd.DataFrame()
    main = [
        f"{t}.{MAIN_METRIC[t]}" for t in done["tasks"].iloc[0].split(",") if f"{t}.{MAIN_METRIC[t]}" in done
    ]
    deltas = [c for c in ("delta_t", "delta_m", "delta_t_control") if c in done and done[c].notna().any()]
    columns = ["achieved_sparsity", *main, *deltas]
    keys = ["dataset", "arch", "method", "target_sparsity"]
    table = done.groupby(keys, sort=False)[columns].mean()
    table["seeds"] = done.groupby(keys, sort=False)["seed"].nunique()
    return table.reset_index()
