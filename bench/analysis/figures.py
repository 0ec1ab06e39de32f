"""Figures from stored results: ΔT vs achieved sparsity per method (PNG and PDF)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from bench.store import atomic_write_bytes

matplotlib.rcParams["pdf.fonttype"] = 42  # embed TrueType: editable, searchable text in the PDF


def delta_t_vs_sparsity(frame: pd.DataFrame, out_stem: Path) -> list[Path]:
    """ΔT (mean over seeds, band = std) vs achieved sparsity, one line per method; dense at ΔT = 0."""
    done = (
        frame[(frame["status"] == "done") & frame["delta_t"].notna()]
        if "delta_t" in frame
        else frame.iloc[0:0]
    )
    if done.empty:
        raise ValueError("no finished cell with a ΔT to plot")
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    ax.axhline(0.0, color="0.4", linestyle="--", linewidth=1, label="dense")
    sns.lineplot(
        data=done.sort_values("achieved_sparsity"),
        x="achieved_sparsity",
        y="delta_t",
        hue="method",
        style="method",
        markers=True,
        dashes=False,
        errorbar="sd",
        ax=ax,
    )
    title = " / ".join(sorted(set(done["dataset"] + " · " + done["arch"])))
    ax.set(xlabel="achieved sparsity (prunable weights)", ylabel="ΔT vs dense (%)", title=title)
    # Outside the axes: with a full roster of methods an inside legend would hide the curves.
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=200)
        atomic_write_bytes(path, buffer.getvalue())
    plt.close(fig)
    return paths
