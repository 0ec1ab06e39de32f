"""Figures from stored masks: per-layer sparsity heatmap, cross-task IoU over depth, method-overlap matrix.

Each function returns a :class:`matplotlib.figure.Figure` and, given ``out_stem``, also writes
``<out_stem>.png`` and ``<out_stem>.pdf`` atomically (house style of :mod:`mtlprune.analysis.figures`:
seaborn, TrueType fonts embedded in the PDF). Figures are built with the object-oriented API, not
pyplot: nothing is registered in pyplot's global state, so returning them leaks nothing in a long
report loop, no backend has to be chosen (rendering is headless), and a notebook still displays them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from mtlprune.analysis.masks import OVERALL, layer_sparsity
from mtlprune.store import atomic_write_bytes
from mtlprune.vocabulary import task_name

SPARSITY_LABEL = "Sparsity (pruned fraction)"
DEPTH_LABEL = "Depth within component (layer order)"
IOU_X_LABEL = "Backbone layer (depth order)"
IOU_Y_LABEL = "IoU of the tasks' keep-masks"
METHOD_LABEL = "Method"


def _write(fig: Figure, out_stem: Path | None) -> None:
    """PNG and PDF beside each other, each written atomically (a reader never sees half a figure)."""
    if out_stem is None:
        return
    out_stem = Path(out_stem)
    with matplotlib.rc_context({"pdf.fonttype": 42}):  # embed TrueType: editable, searchable PDF text
        for suffix in (".png", ".pdf"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=suffix[1:], dpi=200)
            atomic_write_bytes(out_stem.with_suffix(suffix), buffer.getvalue())


def _short(name: str) -> str:
    """A layer label for plots: ``backbone.layer3.0.conv1.weight`` → ``layer3.0.conv1``."""
    return name.removeprefix("backbone.").removeprefix("heads.").removesuffix(".weight")


def _component_title(component: str) -> str:
    """``head/segment_semantic`` → ``Seg head``; ``backbone`` as it is (the tables' task names)."""
    kind, _, task = component.replace(".", "/").partition("/")
    return f"{task_name(task)} {kind}" if task and kind in ("head", "path") else component


def layer_sparsity_heatmap(
    masks: Mapping[str, np.ndarray], out_stem: Path | None = None, title: str | None = None
) -> Figure:
    """Where a run's pruning went: rows = depth index within a component, columns = components.

    A ResNet-34 backbone has 36 prunable layers and each ASPP head 12, so a plain layers × components
    grid would be mostly empty (every layer belongs to one component). Rows are therefore the depth
    index within each component (input side at the top) and columns the components (backbone first,
    then the heads in stored order): the backbone column is read top to bottom as the network, the head
    columns side by side compare the tasks' heads layer for layer, and cells below a shorter
    component's last layer are left blank. Each cell is annotated with its sparsity in percent; each
    column label gives the component's overall sparsity (weights pooled).
    """
    frame = layer_sparsity(masks)
    if frame.empty:
        raise ValueError("no mask to plot")
    components = list(dict.fromkeys(frame["component"]))
    grid = frame.pivot(index="depth", columns="component", values="sparsity")[components]
    pooled = frame.groupby("component", sort=False)[["params", "kept"]].sum()
    column_labels = [
        f"{_component_title(c)}\n{100 * (1 - pooled.loc[c, 'kept'] / pooled.loc[c, 'params']):.1f}%"
        for c in components
    ]
    n_rows = len(grid)
    fig = Figure(figsize=(2.0 + 1.15 * len(components), 1.4 + 0.17 * n_rows), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(
        grid * 100,
        vmin=0,
        vmax=100,
        cmap="rocket_r",
        annot=True,
        fmt=".0f",
        annot_kws={"fontsize": 6},
        linewidths=0.3,
        linecolor="white",
        cbar_kws={"label": SPARSITY_LABEL.replace("fraction", "%")},
        ax=ax,
    )
    ax.set_facecolor("0.94")  # blank cells: no layer at that depth in this component
    ax.set_xticklabels(column_labels, rotation=0, fontsize=7)
    ax.set_yticks(np.arange(n_rows) + 0.5, [str(d) for d in grid.index], rotation=0, fontsize=6)
    ax.set(xlabel="Component (overall sparsity)", ylabel=DEPTH_LABEL, title=title or "Per-layer sparsity")
    _write(fig, out_stem)
    return fig


def task_iou_curve(
    task_iou_frame: pd.DataFrame, out_stem: Path | None = None, title: str | None = None
) -> Figure:
    """Cross-task IoU of the backbone layers over depth: where the tasks stop agreeing (the "watershed").

    ``task_iou_frame`` is :func:`mtlprune.analysis.masks.task_iou` output. The solid line is the all-task
    IoU (DiSparse's number for 2 tasks); with more than 2 tasks a dashed line adds the mean pairwise IoU,
    which the strict all-task agreement understates. Layers with an undefined IoU (empty union) are gaps.
    Every backbone layer is shown, downsample convolutions included (DiSparse's plot drops them); the
    overall (pooled) IoU is given in the title, like the paper's "Total IoU".
    """
    layers = task_iou_frame[task_iou_frame["layer"] != OVERALL]
    if layers.empty:
        raise ValueError("no backbone layer to plot")
    overall = task_iou_frame[task_iou_frame["layer"] == OVERALL]
    tasks = [c.removeprefix("kept.") for c in task_iou_frame.columns if c.startswith("kept.")]
    depth = layers["depth"].astype(int).to_numpy()
    fig = Figure(figsize=(max(6.4, 0.17 * len(layers) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(depth, layers["iou"].astype(float), marker="o", markersize=3, label="all tasks: |∩| / |∪|")
    if len(tasks) > 2:
        ax.plot(
            depth,
            layers["mean_pairwise_iou"].astype(float),
            marker="s",
            markersize=3,
            linestyle="--",
            label="mean over task pairs",
        )
    ax.set_xticks(depth, [_short(n) for n in layers["layer"]], rotation=90, fontsize=6)
    ax.set_ylim(0.0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    heading = title
    if heading is None:
        heading = f"cross-task IoU ({len(tasks)} tasks)" if tasks else "cross-task IoU"
        if not overall.empty and not math.isnan(float(overall["iou"].iloc[0])):
            heading += f" · overall {float(overall['iou'].iloc[0]):.3f}"
    ax.set(xlabel=IOU_X_LABEL, ylabel=IOU_Y_LABEL, title=heading)
    ax.legend(frameon=False, fontsize="small")
    _write(fig, out_stem)
    return fig


def overlap_heatmap(matrix: pd.DataFrame, out_stem: Path | None = None, title: str | None = None) -> Figure:
    """Methods × methods Jaccard of the kept weights (from :func:`overlap_matrix`), annotated, 0 to 1.

    Two methods at the same sparsity may keep largely different weights; the annotated square matrix
    shows how much they share. The default title names the setting recorded in ``matrix.attrs``.
    """
    if matrix.empty:
        raise ValueError("empty overlap matrix")
    n = len(matrix)
    fig = Figure(figsize=(max(5.6, 2.4 + 0.75 * n), 1.8 + 0.6 * n), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(
        matrix.astype(float),
        vmin=0,
        vmax=1,
        cmap="mako",
        annot=True,
        fmt=".2f",
        square=True,
        cbar_kws={"label": "Jaccard of kept weights"},
        ax=ax,
    )
    attrs = matrix.attrs
    if title is None:  # one short line each: what, on which data, on which model
        lines = [
            "mask overlap"
            + (f" at target sparsity {attrs['target_sparsity']:g}" if "target_sparsity" in attrs else "")
        ]
        if "dataset" in attrs:
            tasks = f" ({str(attrs['tasks']).replace(',', ', ')})" if "tasks" in attrs else ""
            lines.append(f"{attrs['dataset']}{tasks}")
        model = [str(attrs["arch"])] if "arch" in attrs else []
        model += [f"seed {attrs['seed']}"] if "seed" in attrs else []
        lines += [" · ".join(model)] if model else []
        title = "\n".join(lines)
    fig.suptitle(title, fontsize="medium")
    ax.set(xlabel=METHOD_LABEL, ylabel=METHOD_LABEL)
    ax.set_xticks(ax.get_xticks(), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.tick_params(axis="y", labelrotation=0)
    _write(fig, out_stem)
    return fig
