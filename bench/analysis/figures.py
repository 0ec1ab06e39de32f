"""Paper figures from stored results: metrics and ΔT/Δm vs sparsity, per-component allocation, curves.

Every plot function takes :func:`mtlprune.analysis.load_results`-shaped frames (or a training log) and returns
a :class:`matplotlib.figure.Figure` built with the object-oriented API (nothing enters pyplot's global
state, so a notebook displays it and a long report loop leaks nothing); :func:`save_figure` writes it as
PDF and PNG, each atomically. Figures share the house style of :mod:`mtlprune.analysis.style`: one colour and
marker per method (pass the same :class:`StyleMap` to every figure of a set), ``paper`` sizes of one or two
columns, TrueType text embedded in the PDF.

Facets: one column per *setting* (dataset, arch, and whatever else differs between the frame's cells:
tasks, widths, protocol), so a frame of several datasets or architectures still gives one figure. Points
are the mean over seeds of the finished cells at each target sparsity, drawn at their mean *achieved*
sparsity; the band is ± one sample std over seeds (absent for a single seed). As in
:func:`mtlprune.analysis.aggregate`, a metric that is NaN in one seed makes that point NaN (a gap), never a
partial mean.

Every axis speaks the tables' language (:mod:`mtlprune.analysis.labels`): display names with unit and
direction (``Seg mIoU (%) ↑``), values in the tables' units (fractions shown in %), sparsity in %, datasets
and architectures by their display names. A panel with nothing to draw says so on the panel, and a figure
with fewer than two points in all says so on the figure and with a :class:`SparseFigureWarning`.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mtlprune.analysis.curves import (
    component_sparsity_columns,
    loss_columns,
    overall_sparsity_columns,
    threshold_columns,
)
from mtlprune.analysis.labels import column_label, column_scale, setting_title
from mtlprune.analysis.load import on_pruning_axis
from mtlprune.analysis.published import REAL_SPARSITY, plotted_sparsity
from mtlprune.analysis.style import (
    DENSE_COLOR,
    DENSE_LABEL,
    REFERENCE_COLOR,
    FigureStyle,
    StyleMap,
    base_name,
    figure_style,
    style_context,
)
from mtlprune.store import atomic_write_bytes
from mtlprune.vocabulary import DIRECTIONS, MAIN_METRIC, METRICS, TASKS, task_name

__all__ = [
    "DELTA_LABELS",
    "SPARSITY_X",
    "SparseFigureWarning",
    "delta_t_vs_sparsity",
    "delta_vs_cost",
    "delta_vs_sparsity",
    "figure_bytes",
    "metrics_vs_sparsity",
    "published_points",
    "save_figure",
    "sparsity_allocation",
    "training_curves",
    "training_overview",
]

SPARSITY_X = "Sparsity (%)"
STEP_X = "Optimizer step (all phases)"
DELTA_LABELS = {
    "delta_t": "ΔT vs dense (%) ↑",
    "delta_m": "Δm vs dense (%) ↑",
    "delta_t_control": "ΔT vs control (%) ↑",
    "delta_m_control": "Δm vs control (%) ↑",
    "delta_m_stl": "Δm vs single-task (%) ↑",
}
NO_DATA = "no finished value here"
GRID_COLUMNS = 4  # panels per row of a wrapped grid ("all metrics"): 7 in / 4 ≈ 1.7 in per panel
SETTING_KEYS = ("dataset", "tasks", "arch", "width", "head_width", "protocol")
# Keys a published row is matched on (its widths are unknown and its protocol is the paper's own).
PUBLISHED_KEYS = ("dataset", "tasks", "arch")
PUBLISHED_PREFIX = "published: "
# Appended to a published table's legend entry when some of its markers sit at their real sparsity.
REAL_SPARSITY_NOTE = " (at real sparsity)"
TARGET_LABEL = "target"
# Lines inside one run's curves (tasks, components, threshold groups): not method colours.
PART_COLORS = tuple(matplotlib.colormaps["Dark2"].colors)
BAND_ALPHA = 0.18


# ------------------------------------------------------------------------------------------- saving


def figure_bytes(fig: Figure, fmt: str, style: str | FigureStyle = "paper") -> bytes:
    """``fig`` encoded as ``fmt`` (png, pdf, svg) at the style's resolution, TrueType text embedded."""
    resolved = figure_style(style)
    with style_context(resolved):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=resolved.dpi)
    return buffer.getvalue()


def save_figure(
    fig: Figure,
    out_stem: str | Path,
    style: str | FigureStyle = "paper",
    formats: Sequence[str] = ("pdf", "png"),
) -> list[Path]:
    """``<out_stem>.pdf`` and ``<out_stem>.png`` (or ``formats``), each written atomically; their paths."""
    out_stem = Path(out_stem)
    paths = []
    for fmt in formats:
        path = out_stem.with_name(f"{out_stem.name}.{fmt}")
        atomic_write_bytes(path, figure_bytes(fig, fmt, style))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ helpers


class SparseFigureWarning(UserWarning):
    """A figure that has fewer than two points to show (it still renders, and says so on itself)."""


def _say_if_sparse(fig: Figure, axes: Any, points: int, what: str) -> None:
    """Write "no data" on empty panels; note and warn when the whole figure has fewer than two points."""
    for ax in np.ravel(axes):
        if ax.get_visible() and not ax.has_data():
            ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="0.4")
    if points < 2:
        message = f"{what}: only {points} point(s) to show" if points else f"{what}: nothing to show"
        fig.text(0.5, 0.5, message, ha="center", va="center", color="0.25", fontsize="large", alpha=0.8)
        warnings.warn(message, SparseFigureWarning, stacklevel=3)


def _percent_axis(ax: Axes, axis: str = "x") -> None:
    """Ticks at round percentages (70, 75, … not 0.700, 0.725, …)."""
    locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(locator)


def _done(frame: pd.DataFrame) -> pd.DataFrame:
    if "status" not in frame:
        raise KeyError("the frame has no 'status' column; expected load_results() output")
    return frame[frame["status"] == "done"]


def _on_pruning_axis(done: pd.DataFrame) -> pd.DataFrame:
    """Rows on the pruning-sparsity axis; a multi-model method's delta sparsity (ECS) is drawn in
    :func:`delta_vs_cost` instead, never on this axis."""
    return on_pruning_axis(done)


def _keys(frame: pd.DataFrame, keys: Sequence[str] = SETTING_KEYS) -> list[str]:
    return [k for k in keys if k in frame]


def _key_series(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One string per row naming its setting (NaN-safe, float-safe equality of setting keys)."""
    if frame.empty:
        return pd.Series([], dtype=str, index=frame.index)
    return frame[list(keys)].astype(str).agg("|".join, axis=1)


def _settings(frame: pd.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """(key, values) per distinct setting of the frame, ordered by dataset, tasks, arch, widths."""
    keys = _keys(frame)
    unique = frame[keys].drop_duplicates()
    unique = unique.sort_values(keys, key=lambda s: s.astype(str)).to_dict("records")
    return [("|".join(str(v) for v in values.values()), values) for values in unique]


def _setting_titles(settings: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Panel titles: dataset and arch (display names) always, then whatever else varies between them."""
    varying = [
        k
        for k in ("tasks", "width", "head_width", "protocol")
        if len({str(values.get(k)) for _, values in settings}) > 1
    ]
    titles = {}
    for key, values in settings:
        parts = [setting_title(str(values.get("dataset")), str(values.get("arch")))]
        for k in varying:
            value = values.get(k)
            if k == "tasks":
                value = "+".join(task_name(t) for t in str(value).split(","))
            parts.append(f"{k.replace('_', ' ')} {value}" if k in ("width", "head_width") else str(value))
        titles[key] = " · ".join(parts)
    return titles


def _dataset_of(rows: pd.DataFrame) -> str | None:
    """The one dataset of some rows (its units apply), None when there are several."""
    values = rows["dataset"].dropna().unique() if "dataset" in rows else []
    return str(values[0]) if len(values) == 1 else None


def _points(rows: pd.DataFrame, y: str, x_column: str | None = None, x_scale: float = 1.0) -> pd.DataFrame:
    """Per (method, target): x = mean achieved sparsity (%) or the mean of ``x_column`` × ``x_scale``, y mean
    and sample std over seeds in the column's display unit, n seeds."""
    if x_column is None:
        x = rows["achieved_sparsity"].astype(float).fillna(rows["target_sparsity"].astype(float)) * 100.0
    else:
        x = pd.to_numeric(rows[x_column], errors="coerce").astype(float) * x_scale
    scale = column_scale(y, _dataset_of(rows))
    data = pd.DataFrame(
        {"method": rows["method"], "target": rows["target_sparsity"].astype(float), "x": x}
    ).assign(y=pd.to_numeric(rows[y], errors="coerce").astype(float) * scale)
    grouped = data.groupby(["method", "target"], sort=True)
    out = grouped.agg(x=("x", "mean"), y=("y", "mean"), std=("y", "std"), n=("y", "size"))
    has_nan = data["y"].isna().groupby([data["method"], data["target"]], sort=True).any()
    out.loc[has_nan, ["y", "std"]] = math.nan
    return out.reset_index().sort_values(["method", "x"])


def _draw_method(ax: Axes, points: pd.DataFrame, label: str, styles: StyleMap) -> None:
    style = styles[label]
    ax.plot(points["x"], points["y"], label=label, color=style.color, marker=style.marker, clip_on=False)
    band = points[points["std"].notna()]
    if not band.empty:
        ax.fill_between(
            band["x"],
            band["y"] - band["std"],
            band["y"] + band["std"],
            color=style.color,
            alpha=BAND_ALPHA,
            lw=0,
        )


def _draw_methods(
    ax: Axes, all_points: pd.DataFrame, methods: Sequence[str], styles: StyleMap
) -> tuple[list[str], int]:
    """Each method's line of ``all_points`` (a :func:`_points` frame) that has a value: (methods drawn,
    points drawn)."""
    drawn, n_points = [], 0
    for method in methods:
        points = all_points[all_points["method"] == method].sort_values("x")
        if points["y"].notna().any() and points["x"].notna().any():
            _draw_method(ax, points, method, styles)
            drawn.append(method)
            n_points += int(points["y"].notna().sum())
    return drawn, n_points


def _method_handles(labels: Sequence[str], styles: StyleMap) -> list[Line2D]:
    return [Line2D([], [], label=lab, color=styles[lab].color, marker=styles[lab].marker) for lab in labels]


def _bar_handles(labels: Sequence[str], styles: StyleMap) -> list[Any]:
    """Legend patches of bars: colour and hatch (bars have no marker)."""
    from matplotlib.patches import Patch

    return [
        Patch(
            facecolor=styles[lab].color,
            hatch=styles[lab].hatch or None,
            edgecolor="white" if styles[lab].hatch else styles[lab].color,
            linewidth=0.0,
            label=lab,
        )
        for lab in labels
    ]


def _dense_handle() -> Line2D:
    return Line2D([], [], color=DENSE_COLOR, linestyle="--", label=DENSE_LABEL)


def _text_width(text: str, font_size: float) -> float:
    """Width in inches of ``text`` set in the current rc font at ``font_size`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    width, _, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=font_size), False)
    return width / 72


def _legend_cols(labels: Sequence[str], width_in: float, font_size: float) -> int:
    """As many legend columns as fit the figure's width with its widest label (never wider than it)."""
    if not labels:
        return 1
    size = font_size - 1  # legend.fontsize
    # handle (1.8 em) + pad (0.8 em) + column spacing (1.0 em) + the widest label as set in the rc font
    column = size / 72 * 3.6 + max(_text_width(str(label), size) for label in labels)
    return max(1, min(len(labels), int(0.97 * width_in // column)))


def _figure(
    n_rows: int, n_cols: int, fs: FigureStyle, legend: Sequence[str], **subplot_kw: Any
) -> tuple[Figure, Any]:
    """A constrained-layout grid (two paper columns wide when it has several) with room for a legend
    of the entries ``legend`` below it."""
    width = fs.width(2 if n_cols > 1 else 1)
    legend_rows = math.ceil(len(legend) / _legend_cols(legend, width, fs.font_size)) if legend else 0
    height = fs.panel_height * n_rows + legend_rows * fs.font_size * 1.7 / 72 + 0.15
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False, **subplot_kw)


def _legend(fig: Figure, handles: list[Line2D], n_cols: int) -> None:
    """One legend for the whole figure, below the panels, in as many columns as fit its width."""
    if handles:
        labels = [str(h.get_label()) for h in handles]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=_legend_cols(labels, fig.get_figwidth(), matplotlib.rcParams["font.size"]),
            frameon=False,
            handlelength=1.8,
            columnspacing=1.0,
        )


def _styles_for(frame: pd.DataFrame, styles: StyleMap | None) -> StyleMap:
    return styles if styles is not None else StyleMap(str(m) for m in frame["method"].dropna().unique())


# -------------------------------------------------------------------------------- accuracy figures


def _metric_list(done: pd.DataFrame, metrics: Sequence[str] | str | None) -> list[str]:
    if metrics is None or metrics == "all":
        out: list[str] = []
        for dataset, tasks in done[["dataset", "tasks"]].drop_duplicates().itertuples(index=False):
            for task in str(tasks).split(","):
                names = (
                    [MAIN_METRIC[task]] if metrics is None else list(METRICS.get(dataset, {}).get(task, {}))
                )
                out += [f"{task}.{n}" for n in names if f"{task}.{n}" not in out]
        return [m for m in out if m in done and done[m].notna().any()]
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    absent = [m for m in wanted if m not in done]
    if absent:
        known = sorted(c for c in done.columns if c in DIRECTIONS)
        raise KeyError(f"metric column(s) {absent} not in the frame; its metric columns: {known}")
    return wanted


def metrics_vs_sparsity(
    frame: pd.DataFrame,
    dense: pd.DataFrame | None = None,
    metrics: Sequence[str] | str | None = None,
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
    columns: int | None = None,
) -> Figure:
    """Each task metric vs achieved sparsity, one line per method; one legend for the whole figure.

    ``metrics``: None = the main metric of each task (``mtlprune.vocabulary.MAIN_METRIC``), ``"all"`` = every
    metric of the dataset's vocabulary, or a list of columns. Layout: rows = metrics and columns = settings,
    or, with ``columns`` (default 4 for ``"all"``), one panel per (setting, metric) wrapped into a grid of
    that many columns, each panel titled with its metric, so that twelve metrics fit a two-column page.
    ``dense`` (the output of :func:`mtlprune.analysis.dense_results.load_dense`) adds the dense model of each
    setting as a dashed horizontal line (mean over its seeds). The legend lists the methods drawn, then
    ``dense``.
    """
    done = _on_pruning_axis(_done(frame))
    if done.empty:
        raise ValueError("no finished cell to plot (every cell is failed, pending or missing)")
    metric_list = _metric_list(done, metrics)
    if not metric_list:
        raise ValueError("no metric column with a value in the finished cells")
    if columns is None and metrics == "all":
        columns = GRID_COLUMNS
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be a positive number of panels per row, got {columns}")
    styles = _styles_for(done, styles)
    settings = _settings(done)
    titles = _setting_titles(settings)
    keys = _keys(done)
    cell_keys = _key_series(done, keys)
    dense_keys = None
    if dense is not None and not dense.empty:
        dense = dense[dense["status"] == "done"]
        dense_keys = _key_series(dense, keys) if all(k in dense for k in keys) else None
    # (setting index, metric) per panel and its grid position
    panels = [(c, m) for c in range(len(settings)) for m in metric_list]
    if columns is None:
        n_rows, n_cols = len(metric_list), len(settings)
        where = {(c, m): (r, c) for c in range(len(settings)) for r, m in enumerate(metric_list)}
    else:
        n_cols = min(columns, len(panels))
        n_rows = math.ceil(len(panels) / n_cols)
        where = {panel: divmod(i, n_cols) for i, panel in enumerate(panels)}
    drawn: list[str] = []
    has_dense = False
    n_points = 0
    with style_context(style) as fs:
        methods = sorted(done["method"].astype(str).unique())
        share = {"sharex": True, "sharey": "row"} if columns is None else {"sharex": True}
        fig, axes = _figure(n_rows, n_cols, fs, [*methods, "dense"], **share)
        for (col, metric), (r, c) in where.items():
            key = settings[col][0]
            rows = done[cell_keys == key]
            dataset = _dataset_of(rows)
            ax = axes[r][c]
            shown, count = _draw_methods(ax, _points(rows, metric), methods, styles)
            drawn += shown
            n_points += count
            if dense_keys is not None and metric in dense:
                ref = pd.to_numeric(dense.loc[dense_keys == key, metric], errors="coerce").dropna()
                if not ref.empty:
                    value = float(ref.mean()) * column_scale(metric, dataset)
                    ax.axhline(value, color=DENSE_COLOR, linestyle="--", label=DENSE_LABEL)
                    has_dense = True
            _percent_axis(ax)
            label = column_label(metric, dataset)
            if columns is None:
                if r == 0:
                    ax.set_title(titles[key])
                if c == 0:
                    ax.set_ylabel(label)
            else:
                ax.set_title(label if len(settings) == 1 else f"{label}\n{titles[key]}")
            if r == n_rows - 1 or (columns is not None and (r + 1) * n_cols + c >= len(panels)):
                ax.set_xlabel(SPARSITY_X)
                ax.xaxis.set_tick_params(labelbottom=True)
        for i in range(len(panels), n_rows * n_cols):  # the grid's unused tail
            axes[i // n_cols][i % n_cols].set_visible(False)
        labels = [m for m in methods if m in drawn]
        _legend(fig, _method_handles(labels, styles) + ([_dense_handle()] if has_dense else []), n_cols)
        if title:
            fig.suptitle(title)
        elif columns is not None and len(settings) == 1:
            fig.suptitle(titles[settings[0][0]])
        _say_if_sparse(fig, axes, n_points, "metrics vs sparsity")
    return fig


def _published_rows(
    published: pd.DataFrame | None, values: Mapping[str, Any], methods: set[str]
) -> pd.DataFrame:
    """Published rows of one setting, for methods the frame also has (matched by method name)."""
    if published is None or published.empty:
        return pd.DataFrame()
    mask = pd.Series(True, index=published.index)
    for key in PUBLISHED_KEYS:
        mask &= published[key].astype(str) == str(values.get(key))
    rows = published[mask & (published["method"] != DENSE_LABEL)]
    bases = {base_name(m) for m in methods}
    return rows[rows["method"].astype(str).map(base_name).isin(bases)]


def _published_labels(parts: Sequence[pd.DataFrame]) -> dict[str, str]:
    """Legend entry of each published table among the rows of ``parts`` ("<source> <table>" → label): the
    table, noted "(at real sparsity)" when one of its rows has a ``real_sparsity`` (and is placed there)."""
    labels: dict[str, str] = {}
    for rows in parts:
        for _, row in rows.iterrows():
            name = f"{row['source']} {row['table']}"
            real = not pd.isna(row.get(REAL_SPARSITY, math.nan))
            if real or name not in labels:
                labels[name] = f"{PUBLISHED_PREFIX}{name}" + (REAL_SPARSITY_NOTE if real else "")
    return labels


def published_points(frame: pd.DataFrame, published: pd.DataFrame | None) -> int:
    """How many published points :func:`delta_vs_sparsity` would draw for ``frame`` (for captions)."""
    done = _done(frame)
    if done.empty:
        return 0
    methods, count = set(done["method"].astype(str)), 0
    for _, values in _settings(done):
        rows = _published_rows(published, values, methods)
        shown = [d for d in ("delta_t", "delta_m") if d in rows]
        count += int(rows[shown].notna().any(axis=1).sum()) if shown and not rows.empty else 0
    return count


def delta_vs_sparsity(
    frame: pd.DataFrame,
    published: pd.DataFrame | None = None,
    deltas: Sequence[str] = ("delta_t", "delta_m", "delta_t_control"),
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """ΔT (and Δm) vs achieved sparsity per method; dense at 0; published points as hollow markers.

    Rows = ``deltas`` that have values (``delta_t_control``: against the setting's control cell, the dense
    model finetuned unpruned, whose own point sits at sparsity 0 in the rows against dense; in that row the
    dashed zero line is the control), columns = settings. ``published``
    (:func:`mtlprune.analysis.load_published` output) adds the papers' points of the same dataset, tasks and
    architecture, for the methods the frame has, as hollow markers in the method's colour, at the sparsity
    the paper's code really reaches where ``real_sparsity`` is known (DiSparse's "90%" static NYU-v2 row:
    92.1%), else at the printed overall sparsity, else at the target
    (:func:`mtlprune.analysis.published.plotted_sparsity`); the legend gives one entry per published table,
    marked "(at real sparsity)" when some of its points are placed at their real sparsity.
    Note that published numbers follow their paper's evaluation protocol (``protocol`` column), which may
    differ from the runs'.
    """
    done = _on_pruning_axis(_done(frame))
    rows_with = [d for d in deltas if d in done and done[d].notna().any()]
    if done.empty or not rows_with:
        raise ValueError(f"no finished cell with a value of {list(deltas)} to plot")
    styles = _styles_for(done, styles)
    settings = _settings(done)
    titles = _setting_titles(settings)
    cell_keys = _key_series(done, _keys(done))
    methods = sorted(done["method"].astype(str).unique())
    drawn: list[str] = []
    tables: list[str] = []
    at_real: set[str] = set()  # published tables with a point placed at its real sparsity
    n_points = 0
    pub_parts = [_published_rows(published, values, set(methods)) for _, values in settings]
    # sized into the legend before the figure is made, so the panels keep their height
    published_labels = sorted(_published_labels(pub_parts).values())
    with style_context(style) as fs:
        fig, axes = _figure(
            len(rows_with),
            len(settings),
            fs,
            [*methods, "dense", *published_labels],
            sharex=True,
            sharey="row",
        )
        for col, (key, values) in enumerate(settings):
            rows = done[cell_keys == key]
            pub = _published_rows(published, values, set(methods))
            for row, delta in enumerate(rows_with):
                ax = axes[row][col]
                ax.axhline(0.0, color=DENSE_COLOR, linestyle="--", label=DENSE_LABEL)
                shown, count = _draw_methods(ax, _points(rows, delta), methods, styles)
                drawn += shown
                n_points += count
                if not pub.empty and delta in pub:
                    for _, point in pub[pub[delta].notna()].iterrows():
                        style_ = styles[str(point["method"])]
                        ax.plot(
                            [100.0 * plotted_sparsity(point)],
                            [float(point[delta])],
                            linestyle="none",
                            marker=style_.marker,
                            markerfacecolor="none",
                            markeredgecolor=style_.color,
                            markeredgewidth=1.0,
                            markersize=fs.marker_size * 1.6,
                            label=f"{PUBLISHED_PREFIX}{point['source']} {point['table']}",
                            clip_on=False,
                        )
                        name = f"{point['source']} {point['table']}"
                        if name not in tables:
                            tables.append(name)
                        if not pd.isna(point.get(REAL_SPARSITY, math.nan)):
                            at_real.add(name)
                _percent_axis(ax)
                if row == 0:
                    ax.set_title(titles[key])
                if col == 0:
                    ax.set_ylabel(DELTA_LABELS.get(delta, delta))
                if row == len(rows_with) - 1:
                    ax.set_xlabel(SPARSITY_X)
        handles = [*_method_handles([m for m in methods if m in drawn], styles), _dense_handle()]
        handles += [
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor=DENSE_COLOR,
                label=f"{PUBLISHED_PREFIX}{name}" + (REAL_SPARSITY_NOTE if name in at_real else ""),
            )
            for name in tables
        ]
        _legend(fig, handles, len(settings))
        if title:
            fig.suptitle(title)
        _say_if_sparse(fig, axes, n_points, "ΔT vs sparsity")
    return fig


# Cost axes of delta_vs_cost: (axis label, frame columns in order of preference, scale to the shown unit).
# Stored parameters: a multi-model method (ECS) stores base + non-zero deltas + heads (`params_stored`);
# a pruned model its non-zero weights (`params_nonzero`). FLOPs are compared like for like, never a
# data-dependent count against a static one: `flops` is the static count every cell has (`flops_sparse`:
# zero weights skipped; for ECS the joint task set without activation sharing), `flops_input` the
# data-dependent count of every model (`flops_input_sparse`: zero weights and zero activations skipped;
# for ECS its shared forward), docs/accounting.md.
COST_AXES: dict[str, tuple[str, tuple[str, ...], float]] = {
    "params": ("Stored parameters (M)", ("params_stored", "params_nonzero"), 1e-6),
    "flops": ("FLOPs per image (G)", ("flops_sparse",), 1e-9),
    "flops_input": ("FLOPs per image, zero activations skipped (G)", ("flops_input_sparse",), 1e-9),
}


def _cost_column(rows: pd.DataFrame, cost: str) -> pd.Series:
    """Each row's cost: the first of the axis's columns that the row has a value for."""
    _, columns, _ = COST_AXES[cost]
    out = pd.Series(math.nan, index=rows.index, dtype=float)
    for column in columns:
        if column in rows:
            out = out.fillna(pd.to_numeric(rows[column], errors="coerce").astype(float))
    return out


def delta_vs_cost(
    frame: pd.DataFrame,
    costs: Sequence[str] = ("params", "flops", "flops_input"),
    delta: str = "delta_t",
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """ΔT against what a model stores and computes, every method on the same axes.

    Rows = ``costs`` that have values (``params``: stored parameters in millions; ``flops``: static FLOPs per
    image in billions; ``flops_input``: the same with zero activations skipped, measured on test images;
    :data:`COST_AXES`), columns = settings. One line per method over its targets (for a multi-model method
    such as ECS, a curve over delta density), mean over seeds; for ΔT and Δm against the dense model, the
    dense model is the grey cross at 0 and its own cost (all parameters, dense FLOPs); against the control
    or the single-task models (``delta_m_stl``) the dashed zero line is that reference. This is the
    comparison axis for methods whose "sparsity" is not pruning sparsity: a pruning method moves left of the
    dense cross, ECS stores more.
    """
    done = _done(frame)
    unknown = [c for c in costs if c not in COST_AXES]
    if unknown:
        raise ValueError(f"unknown cost axis {unknown}; allowed: {', '.join(COST_AXES)}")
    if done.empty or delta not in done or not done[delta].notna().any():
        raise ValueError(f"no finished cell with a value of {delta!r} to plot")
    done = done.assign(**{f"_cost_{c}": _cost_column(done, c) for c in costs})
    rows_with = [c for c in costs if done[f"_cost_{c}"].notna().any()]
    if not rows_with:
        raise ValueError(f"no finished cell records a cost among {[COST_AXES[c][1] for c in costs]}")
    styles = _styles_for(done, styles)
    settings = _settings(done)
    titles = _setting_titles(settings)
    cell_keys = _key_series(done, _keys(done))
    methods = sorted(done["method"].astype(str).unique())
    drawn: list[str] = []
    n_points = 0
    # the dense model's own cost on each axis, as its cells record it
    dense_refs: dict[str, str | None] = {
        "params": "params_total",
        "flops": "flops_dense",
        "flops_input": "dense_flops_input_sparse",
    }
    with style_context(style) as fs:
        fig, axes = _figure(len(rows_with), len(settings), fs, [*methods, "dense"], sharey="row")
        has_dense = False
        for col, (key, _values) in enumerate(settings):
            rows = done[cell_keys == key]
            for row, cost in enumerate(rows_with):
                ax = axes[row][col]
                label, _, scale = COST_AXES[cost]
                ax.axhline(0.0, color=DENSE_COLOR, linestyle="--", linewidth=0.6)
                all_points = _points(rows, delta, x_column=f"_cost_{cost}", x_scale=scale)
                shown, count = _draw_methods(ax, all_points, methods, styles)
                drawn += shown
                n_points += count
                reference = dense_refs[cost]
                pruned = on_pruning_axis(rows)  # a delta-shared model's totals are not the dense model's
                at_zero = delta in ("delta_t", "delta_m")  # else 0 is the control or the single-task models
                if (
                    at_zero
                    and reference is not None
                    and reference in pruned
                    and pruned[reference].notna().any()
                ):
                    x = float(pd.to_numeric(pruned[reference], errors="coerce").mean()) * scale
                    ax.plot([x], [0.0], linestyle="none", marker="X", color=DENSE_COLOR, label=DENSE_LABEL)
                    has_dense = True
                if row == 0:
                    ax.set_title(titles[key])
                if col == 0:
                    ax.set_ylabel(DELTA_LABELS.get(delta, delta))
                ax.set_xlabel(label)
        handles = _method_handles([m for m in methods if m in drawn], styles)
        if has_dense:
            handles.append(Line2D([], [], linestyle="none", marker="X", color=DENSE_COLOR, label=DENSE_LABEL))
        _legend(fig, handles, len(settings))
        if title:
            fig.suptitle(title)
        _say_if_sparse(fig, axes, n_points, "ΔT vs cost")
    return fig


def delta_t_vs_sparsity(frame: pd.DataFrame, out_stem: Path) -> list[Path]:
    """ΔT vs achieved sparsity, against dense and against the control (screen style), written as PNG and
    PDF; the paths (end-of-run summary)."""
    fig = delta_vs_sparsity(frame, deltas=("delta_t", "delta_t_control"), style="screen")
    return save_figure(fig, out_stem, style="screen", formats=("png", "pdf"))


# --------------------------------------------------------------------------------- allocation bars


def _components(tasks: str, frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, tick label) of the backbone and each head, in task order, where the frame has them."""
    out = [("sparsity.backbone", "backbone")]
    out += [(f"sparsity.head.{t}", task_name(t)) for t in str(tasks).split(",")]
    return [(c, label) for c, label in out if c in frame and frame[c].notna().any()]


def sparsity_allocation(
    frame: pd.DataFrame,
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """Where each method put its sparsity: bars per component (backbone, each head) and method.

    Rows = settings, columns = target sparsities; bar height = mean over seeds of the component's
    measured sparsity (``sparsity.backbone``, ``sparsity.head.<task>`` of result.json), error bar = std.
    A dotted line marks the target. Methods that prune globally leave the small heads nearly dense and
    the backbone above target; AdapMTL's learned per-component thresholds show here.
    """
    done = _on_pruning_axis(_done(frame))
    if done.empty:
        raise ValueError("no finished cell to plot (every cell is failed, pending or missing)")
    styles = _styles_for(done, styles)
    done = done[done["target_sparsity"].astype(float) > 0]  # the unpruned control has nothing to allocate
    if done.empty:
        raise ValueError("no finished pruned cell to plot (only unpruned control cells)")
    settings = _settings(done)
    titles = _setting_titles(settings)
    cell_keys = _key_series(done, _keys(done))
    targets = sorted(done["target_sparsity"].astype(float).unique())
    methods = sorted(done["method"].astype(str).unique())
    drawn: list[str] = []
    n_points = 0
    with style_context(style) as fs:
        fig, axes = _figure(len(settings), len(targets), fs, [*methods, "dense"], sharey=True)
        width = 0.8 / len(methods)
        for row, (key, values) in enumerate(settings):
            rows = done[cell_keys == key]
            components = _components(values.get("tasks", ""), rows)
            if not components:
                raise ValueError(
                    f"no per-component sparsity columns (sparsity.backbone, ...) for {titles[key]}"
                )
            positions = np.arange(len(components))
            for col, target in enumerate(targets):
                ax = axes[row][col]
                at = rows[np.isclose(rows["target_sparsity"].astype(float), target)]
                for i, method in enumerate(methods):
                    cells = at[at["method"] == method]
                    if cells.empty:
                        continue
                    values_ = cells[[c for c, _ in components]].astype(float) * 100.0
                    std = values_.std(ddof=1) if len(values_) > 1 else None
                    style_ = styles[method]
                    ax.bar(
                        positions - 0.4 + width * (i + 0.5),
                        values_.mean().to_numpy(),
                        width=width,
                        color=style_.color,
                        hatch=style_.hatch or None,
                        edgecolor="white" if style_.hatch else None,
                        linewidth=0.0,
                        label=method,
                        yerr=None if std is None else std.to_numpy(),
                        error_kw={"elinewidth": 0.6, "capsize": 0},
                    )
                    drawn.append(method)
                    n_points += int(values_.mean().notna().sum())
                ax.axhline(100.0 * target, color=DENSE_COLOR, linestyle=":", label=TARGET_LABEL)
                ax.set_xticks(positions, [label for _, label in components])
                ax.set_ylim(0.0, 100.0)
                ax.grid(axis="x", visible=False)
                if row == 0:
                    ax.set_title(f"Target {100 * target:g}%")
                if row == len(settings) - 1:
                    ax.set_xlabel("Component")
                if col == 0:  # the setting names the row, so titles stay short
                    setting = f"{titles[key]}\n" if len(settings) > 1 else ""
                    ax.set_ylabel(f"{setting}Sparsity of component (%)")
        handles = _bar_handles([m for m in methods if m in drawn], styles)
        handles.append(Line2D([], [], color=DENSE_COLOR, linestyle=":", label=TARGET_LABEL))
        _legend(fig, handles, len(targets))
        fig.suptitle(
            title
            or ("Per-component sparsity" + (f": {titles[settings[0][0]]}" if len(settings) == 1 else ""))
        )
        _say_if_sparse(fig, axes, n_points, "sparsity allocation")
    return fig


# ------------------------------------------------------------------------------------------ curves


def _part_color(part: str) -> Any:
    """One colour per task (its loss, its head) and one for the backbone, the same in every figure."""
    task = part.removeprefix("head.").removeprefix("head/").removeprefix("path.")
    if task in TASKS:
        return PART_COLORS[1 + TASKS.index(task)]
    if part == "backbone":
        return PART_COLORS[0]
    return PART_COLORS[(len(TASKS) + 1 + zlib.crc32(part.encode())) % len(PART_COLORS)]


def _part_label(part: str) -> str:
    """``head.segment_semantic`` → ``seg head``; other groups (backbone, layer names) as they are."""
    if part.startswith("head."):
        task = part.removeprefix("head.")
        return f"{task_name(task)} head"
    return part


def _phase_marks(ax: Axes, log: pd.DataFrame, label: bool) -> None:
    """Dotted lines where the phase changes, the phase names written at the top of the first panel."""
    steps = log[log["step"].notna()] if "step" in log else log.iloc[0:0]
    if steps.empty:
        return
    change = steps["phase"].ne(steps["phase"].shift())
    starts = steps[change]
    for i, (x, phase) in enumerate(zip(starts["x"], starts["phase"], strict=True)):
        if i > 0:
            ax.axvline(float(x), color="0.6", linestyle=":", linewidth=0.8)
        if label:
            ax.annotate(
                str(phase),
                (float(x), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                va="top",
                fontsize="small",
                color="0.35",
            )


def training_curves(
    log: pd.DataFrame, style: str | FigureStyle = "paper", title: str | None = None
) -> Figure:
    """One run's training: loss per task (and total), overall and per-component sparsity, thresholds.

    ``log`` is :func:`mtlprune.analysis.curves.read_log` output. Panels without data in the log are left out
    (a one-shot method logs no sparsity while training; only threshold methods log thresholds). Lines are
    against the cumulative step ``x``; dotted lines mark phase changes.
    """
    step_rows = log[log["step"].notna()] if "step" in log else log.iloc[0:0]
    losses = loss_columns(step_rows)
    overall = overall_sparsity_columns(log)
    components = component_sparsity_columns(log)
    thresholds = threshold_columns(log)
    panels: list[tuple[str, list[tuple[str, str, Any]]]] = []
    if losses or "loss" in step_rows:
        lines = [(c, task_name(t), _part_color(t)) for t, c in losses.items()]
        if "loss" in step_rows and step_rows["loss"].notna().any():
            lines.append(("loss", "total", REFERENCE_COLOR))
        panels.append(("Training loss", lines))
    if overall or components:
        lines = [(c, "overall" if i == 0 else c, REFERENCE_COLOR) for i, c in enumerate(overall)]
        lines += [(c, _part_label(part), _part_color(part)) for part, c in components.items()]
        panels.append(("Sparsity (%)", lines))
    if thresholds:
        lines = [(c, _part_label(group), _part_color(group)) for group, c in thresholds.items()]
        panels.append(("Threshold", lines))
    if not panels:
        raise ValueError("the log has no loss, sparsity or threshold columns to plot")
    with style_context(style) as fs:
        fig = Figure(figsize=(fs.width(1), fs.panel_height * len(panels) + 0.3), layout="constrained")
        axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
        n_points = 0
        for i, (ax, (ylabel, lines)) in enumerate(zip(axes, panels, strict=True)):
            source = step_rows if ylabel == "Training loss" else log
            scale = 100.0 if ylabel == "Sparsity (%)" else 1.0
            for column, label, color in lines:
                data = source[["x", column]].dropna()
                dashed = ylabel == "Training loss" and column == "loss"
                ax.plot(
                    data["x"],
                    data[column] * scale,
                    color=color,
                    label=label,
                    linestyle="--" if dashed else "-",
                    marker="o" if len(data) == 1 else None,  # a single record is a point, not an empty line
                )
                n_points = max(n_points, len(data))
            ax.set_ylabel(ylabel)
            ax.legend(frameon=False, fontsize="small", loc="best")
            _phase_marks(ax, log, label=i == 0)
        axes[-1].set_xlabel(STEP_X)
        fig.suptitle(title or "Training curves")
        _say_if_sparse(fig, axes, n_points, "training curves")
    return fig


def training_overview(
    logs: Mapping[str, pd.DataFrame],
    styles: StyleMap | None = None,
    style: str | FigureStyle = "paper",
    title: str | None = None,
) -> Figure:
    """Several methods' runs side by side: total training loss, and overall sparsity where logged.

    ``logs``: method label → :func:`read_log` frame (one run per method, e.g. one seed at one target).
    """
    if not logs:
        raise ValueError("no log to plot")
    styles = styles if styles is not None else StyleMap(logs)
    sparsity = {m: overall_sparsity_columns(log) for m, log in logs.items()}
    panels = ["loss"] + (["sparsity"] if any(sparsity.values()) else [])
    drawn: list[str] = []
    n_points = 0
    with style_context(style) as fs:
        fig, axes = _figure(1, len(panels), fs, sorted(logs), sharex=True)
        for method in sorted(logs):
            log, style_ = logs[method], styles[method]
            steps = log[log["step"].notna()] if "step" in log else log.iloc[0:0]
            series = []
            if "loss" in steps and steps["loss"].notna().any():
                series.append((axes[0][0], steps[["x", "loss"]].dropna(), "loss", 1.0))
            if sparsity[method]:
                column = sparsity[method][0]
                series.append((axes[0][1], log[["x", column]].dropna(), column, 100.0))
            for ax, data, column, scale in series:
                ax.plot(
                    data["x"],
                    data[column] * scale,
                    color=style_.color,
                    label=method,
                    marker=style_.marker if len(data) == 1 else None,  # one record: a visible point
                )
                drawn.append(method)
                n_points = max(n_points, len(data))
        axes[0][0].set(ylabel="Total training loss", xlabel=STEP_X)
        if len(panels) > 1:
            axes[0][1].set(ylabel="Sparsity while training (%)", xlabel=STEP_X)
        labels = [m for m in sorted(logs) if m in drawn]
        _legend(fig, [Line2D([], [], color=styles[m].color, label=m) for m in labels], len(panels))
        if title:
            fig.suptitle(title)
        _say_if_sparse(fig, axes, n_points, "training overview")
    return fig
