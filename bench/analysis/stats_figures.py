"""Figures of the statistics in :mod:`mtlprune.analysis.stats`: critical-difference diagram, seed intervals.

Both return a matplotlib :class:`~matplotlib.figure.Figure` in the house style of
:mod:`mtlprune.analysis.style` (method colours and markers from a :class:`StyleMap`, paper or screen sizes)
and are saved with :func:`mtlprune.analysis.figures.save_figure`. The CD diagram is drawn in Demšar's (JMLR
2006) layout: a rank axis with rank 1 on the left, the better half of the methods named on the left and
the rest on the right, thick bars joining methods whose mean ranks differ by less than the critical
difference, and the CD itself drawn as a bar of that length above the axis.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath

from mtlprune.analysis.figures import (
    DELTA_LABELS,
    _figure,
    _key_series,
    _keys,
    _legend,
    _method_handles,
    _setting_titles,
    _settings,
)
from mtlprune.analysis.stats import FriedmanResult
from mtlprune.analysis.style import DENSE_COLOR, FigureStyle, StyleMap, style_context

__all__ = ["cd_diagram", "interval_plot"]

TARGET_X = "Target sparsity"
DODGE = 0.7  # width of a target's group of methods, in target slots
CONTROL_SUFFIX = " (control)"


def _text_width(labels: list[str], font_size: float) -> float:
    """Inches the widest label needs at ``font_size`` in the current rc font, plus a margin."""
    font = FontProperties(size=font_size)
    measure = TextToPath()
    widths = [measure.get_text_width_height_descent(label, font, ismath=False)[0] for label in labels]
    return max(widths, default=0.0) / 72 + 0.22


def cd_diagram(
    result: FriedmanResult,
    *,
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """Demšar's critical-difference diagram of a :func:`mtlprune.analysis.stats.friedman_test` result.

    The axis runs from rank 1 (best, left) to k; each method hangs from its mean rank, named with it.
    Thick black bars join the maximal groups of methods whose mean ranks differ by less than the CD
    (:meth:`FriedmanResult.cliques`: no significant difference by the Nemenyi test); the bar labelled
    "CD = …" above the axis has the CD's length. The default title gives Friedman's p and N.
    """
    ordered = result.ranks.sort_values(["mean_rank", "method"], kind="stable")
    names = [str(m) for m in ordered["method"]]
    ranks = [float(r) for r in ordered["mean_rank"]]
    k = len(names)
    if k < 2 or not all(math.isfinite(r) for r in ranks):
        raise ValueError("a critical-difference diagram needs at least two methods with a mean rank")
    styles = styles if styles is not None else StyleMap(names)
    cliques = result.cliques()
    n_left = math.ceil(k / 2)
    labels = [f"{name} ({rank:.2f})" for name, rank in zip(names, ranks, strict=True)]
    with style_context(style) as fs:
        text_in = _text_width(labels, fs.font_size)
        needed = max(1.2, 0.3 * (k - 1))  # inches of rank axis that keep neighbouring ranks apart
        width = fs.width(1) if 2 * text_in + needed <= fs.width(1) else fs.width(2)
        axis_in = max(width - 2 * text_in, needed)
        width = axis_in + 2 * text_in
        row = fs.font_size * 2.0 / 72
        title_in = fs.font_size * 2.2 / 72
        top = title_in + fs.font_size * 3.6 / 72  # title, CD bar with its label, tick labels
        clique_in = 0.05 + 0.045 * len(cliques)
        height = top + clique_in + (n_left + 0.6) * row
        fig = Figure(figsize=(width, height))
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        ax.set_xlim(0.0, width)
        ax.set_ylim(-height, 0.0)  # inches from the top
        high = max(float(k), 1.0 + result.cd)
        scale = axis_in / (high - 1.0)

        def x(rank: float) -> float:
            return text_in + (rank - 1.0) * scale

        axis_y = -top
        line = {"color": "black", "lw": 0.8, "solid_capstyle": "butt"}
        ax.plot([x(1.0), x(high)], [axis_y, axis_y], **line)
        tick = fs.font_size * 0.5 / 72
        for r in range(1, k + 1):
            ax.plot([x(r), x(r)], [axis_y, axis_y + tick], **line)
            ax.text(x(r), axis_y + 1.5 * tick, str(r), ha="center", va="bottom")
        for r in range(1, k):
            ax.plot([x(r + 0.5), x(r + 0.5)], [axis_y, axis_y + tick / 2], **line)
        cd_y = axis_y + fs.font_size * 2.4 / 72
        cd_end = x(1.0 + result.cd)
        ax.plot([x(1.0), cd_end], [cd_y, cd_y], color="black", lw=1.0)
        for end in (x(1.0), cd_end):
            ax.plot([end, end], [cd_y - tick / 2, cd_y + tick / 2], color="black", lw=1.0)
        ax.text((x(1.0) + cd_end) / 2, cd_y + tick / 2, f"CD = {result.cd:.2f}", ha="center", va="bottom")
        for j, clique in enumerate(cliques):
            first, last = ranks[names.index(clique[0])], ranks[names.index(clique[-1])]
            y = axis_y - 0.05 - 0.045 * j
            ax.plot([x(first) - 0.03, x(last) + 0.03], [y, y], color="black", lw=2.2, solid_capstyle="round")
        for i, (name, rank, label) in enumerate(zip(names, ranks, labels, strict=True)):
            left = i < n_left
            level = i if left else k - 1 - i
            y = axis_y - clique_in - (level + 0.6) * row
            end = text_in - 0.05 if left else width - text_in + 0.05
            colour = styles[name].color
            ax.plot([x(rank), x(rank), end], [axis_y, y, y], color=colour, lw=0.9)
            ax.plot([x(rank)], [axis_y], linestyle="none", marker=styles[name].marker, color=colour, zorder=3)
            ax.text(
                end - 0.04 if left else end + 0.04,
                y,
                label,
                ha="right" if left else "left",
                va="center",
            )
        heading = (
            title
            if title is not None
            else (
                f"Nemenyi α = {result.alpha:g} · Friedman p = {result.p_value:.3g} · N = {result.n_blocks}"
                f" blocks, k = {k}"
            )
        )
        ax.text(width / 2, -0.06, heading, ha="center", va="top")
    return fig


def _target_text(target: float) -> str:
    return f"{100 * target:g}%"


def interval_plot(
    intervals: pd.DataFrame,
    *,
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """Mean and bootstrap interval over seeds per method and target: one panel per setting.

    ``intervals`` is :func:`mtlprune.analysis.stats.seed_intervals`'s frame. Targets are slots on the x axis
    with the methods side by side in each; a point is the mean, the bar its interval (none with one
    seed). The ``dense-finetune`` control (``control`` True) is a grey dashed line at its mean with its
    interval shaded, across the panel; for ΔT and Δm a dotted line marks the dense model (0).
    """
    metric = str(intervals.attrs.get("metric", "delta_t"))
    level = float(intervals.attrs.get("level", 0.95))
    shown = intervals[intervals["mean"].notna()]
    if shown.empty:
        raise ValueError("no cell with a mean to plot (no finished seed with a value)")
    pruned = shown[~shown["control"].astype(bool)]
    control = shown[shown["control"].astype(bool)]
    methods = sorted(pruned["method"].astype(str).unique())
    styles = styles if styles is not None else StyleMap(methods)
    settings = _settings(shown)
    titles = _setting_titles(settings)
    keys = _key_series(shown, _keys(shown))
    control_labels = sorted(f"{m}{CONTROL_SUFFIX}" for m in control["method"].astype(str).unique())
    with style_context(style) as fs:
        fig, axes = _figure(1, len(settings), fs, [*methods, *control_labels, "dense"], sharey="row")
        for col, (key, _values) in enumerate(settings):
            ax = axes[0][col]
            rows = pruned[keys.loc[pruned.index] == key]
            targets = sorted(float(t) for t in rows["target_sparsity"].unique())
            slot = {t: i for i, t in enumerate(targets)}
            for j, method in enumerate(methods):
                points = rows[rows["method"].astype(str) == method].sort_values("target_sparsity")
                if points.empty:
                    continue
                xs = [
                    slot[float(t)] + (j - (len(methods) - 1) / 2) * DODGE / len(methods)
                    for t in points["target_sparsity"]
                ]
                mean = points["mean"].to_numpy(dtype=float)
                low = (mean - points["ci_low"].to_numpy(dtype=float)).clip(min=0)
                high = (points["ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
                ax.errorbar(
                    xs,
                    mean,
                    yerr=[low, high],
                    linestyle="none",
                    color=styles[method].color,
                    marker=styles[method].marker,
                    capsize=1.5,
                    elinewidth=fs.line_width,
                    label=method,
                )
            for _, ref in control[keys.loc[control.index] == key].iterrows():
                ax.axhline(float(ref["mean"]), color=DENSE_COLOR, linestyle="--", lw=fs.line_width)
                if float(ref["ci_high"]) > float(ref["ci_low"]):
                    ax.axhspan(
                        float(ref["ci_low"]), float(ref["ci_high"]), color=DENSE_COLOR, alpha=0.12, lw=0
                    )
            if metric in DELTA_LABELS:
                ax.axhline(0.0, color=DENSE_COLOR, linestyle=":", lw=fs.line_width)
            ax.set_xticks(range(len(targets)), [_target_text(t) for t in targets])
            ax.set_xlim(-0.6, len(targets) - 0.4)
            ax.set_title(titles[key])
            ax.set_xlabel(TARGET_X)
            if col == 0:
                ax.set_ylabel(f"{DELTA_LABELS.get(metric, metric)}\nmean, {100 * level:g}% CI")
        handles: list[Any] = _method_handles(methods, styles)
        handles += [Line2D([], [], color=DENSE_COLOR, linestyle="--", label=lab) for lab in control_labels]
        if metric in DELTA_LABELS:
            handles.append(Line2D([], [], color=DENSE_COLOR, linestyle=":", label="dense"))
        _legend(fig, handles, len(settings))
        if title:
            fig.suptitle(title)
    return fig
