"""Display names of the analysis layer's columns and settings: one vocabulary for tables and figures.

Metric names, units and display scales come from the datasets' vocabularies
(:func:`mtlprune.vocabulary.metric_name`); this module adds the columns every dataset shares (ΔT/Δm, the
sparsities, costs) and the display names of datasets and architectures, and composes them: a figure axis
reads ``Seg mIoU (%) ↑`` and a table header ``Seg mIoU ↑`` (its units go into the caption), both from
:func:`column_label`. Values are shown times :func:`column_scale` (fractions as %).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mtlprune.analysis.latex import latex_escape
from mtlprune.vocabulary import DIRECTIONS, HIGHER, dataset_title, metric_name, task_name

__all__ = [
    "ARCH_NAMES",
    "ColumnName",
    "arch_title",
    "column_label",
    "column_name",
    "column_scale",
    "display_frame",
    "setting_title",
]

# Built-in architectures as the papers write them; a plugin architecture is shown by its registered name.
ARCH_NAMES: dict[str, str] = {
    "deeplab_resnet34": "Deeplab-ResNet34",
    "mobilenetv2": "MobileNetV2",
    "vit_b16_convnext": "ViT-B/16",
    "vit_s16_convnext": "ViT-S/16",
    "vit_t_convnext": "ViT-Ti/8 (4 blocks)",
}
DELTA_NAMES: dict[str, tuple[str, str]] = {  # column → (text, LaTeX)
    "delta_t": ("ΔT", r"$\Delta_T$"),
    "delta_m": ("Δm", r"$\Delta_m$"),
    "delta_t_control": ("ΔT vs control", r"$\Delta_T$ vs control"),
    "delta_m_control": ("Δm vs control", r"$\Delta_m$ vs control"),
    "delta_m_stl": ("Δm vs single-task", r"$\Delta_m$ vs single-task"),
}


@dataclass(frozen=True)
class ColumnName:
    """A column as shown: ``text`` and ``latex`` (escaped, ready to typeset), ``unit``, ``scale`` (shown =
    stored × scale), ``direction`` (+1 higher is better, −1 lower, None: neither, e.g. a sparsity).
    ``group`` names the columns it belongs with (the task of a metric, ``Sparsity``) and ``short`` /
    ``short_latex`` the column within it, for two-level table headers (``Seg`` over ``mIoU``)."""

    text: str
    latex: str
    unit: str
    scale: float
    direction: int | None
    group: str | None = None
    short: str = ""
    short_latex: str = ""


def arch_title(arch: str) -> str:
    """``deeplab_resnet34`` → ``Deeplab-ResNet34``; an unknown architecture keeps its name."""
    return ARCH_NAMES.get(arch, arch)


def setting_title(dataset: str | None = None, arch: str | None = None) -> str:
    """``NYU-v2 · Deeplab-ResNet34``: the display names of what is given."""
    parts = [dataset_title(str(dataset))] if dataset else []
    return " · ".join(parts + ([arch_title(str(arch))] if arch else []))


def column_name(column: str, dataset: str | None = None) -> ColumnName:
    """The display name of any column of a ``load_results`` frame (metrics, ΔT/Δm, sparsities, costs)."""
    if column in DIRECTIONS:
        name = metric_name(column, dataset)
        shown = task_name(column.partition(".")[0])
        short_latex = name.latex if name.latex is not None else latex_escape(name.text)
        return ColumnName(
            f"{shown} {name.text}",
            f"{latex_escape(shown)} {short_latex}",
            name.unit,
            name.scale,
            DIRECTIONS[column],
            shown,
            name.text,
            short_latex,
        )
    if column in DELTA_NAMES:
        text, latex = DELTA_NAMES[column]
        return ColumnName(text, latex, "%", 1.0, HIGHER, None, text, latex)
    for prefix in ("delta_t.", "delta_m."):
        if column.startswith(prefix):
            text, latex = DELTA_NAMES[prefix[:-1]]
            task = task_name(column.removeprefix(prefix))
            return ColumnName(
                f"{text} {task}", f"{latex} {latex_escape(task)}", "%", 1.0, HIGHER, task, text, latex
            )
    if column == "achieved_sparsity":
        return ColumnName("Sparsity", "Sparsity", "%", 100.0, None, "Sparsity", "overall", "overall")
    if column == "target_sparsity":
        return ColumnName("Target", "Target", "%", 100.0, None, None, "Target", "Target")
    if column == "sparsity.backbone":
        return ColumnName(
            "Sp. backbone", "Sp. backbone", "%", 100.0, None, "Sparsity", "backbone", "backbone"
        )
    for kind in ("head", "path"):
        prefix = f"sparsity.{kind}."
        if column.startswith(prefix):
            task = task_name(column.removeprefix(prefix))
            text = f"Sp. {task} {kind}"
            short = task if kind == "head" else f"{task} {kind}"
            return ColumnName(
                text, latex_escape(text), "%", 100.0, None, "Sparsity", short, latex_escape(short)
            )
    return ColumnName(column, latex_escape(column), "", 1.0, None, None, column, latex_escape(column))


def column_scale(column: str, dataset: str | None = None) -> float:
    """The factor from a stored value to the shown one (100 for fractions shown in %)."""
    return column_name(column, dataset).scale


def column_label(
    column: str,
    dataset: str | None = None,
    *,
    unit: bool = True,
    arrow: bool = True,
    latex: bool = False,
) -> str:
    """``Seg mIoU (%) ↑``: name, unit in parentheses, direction arrow; each part optional."""
    name = column_name(column, dataset)
    text = name.latex if latex else name.text
    if unit and name.unit:
        shown = latex_escape(name.unit) if latex else name.unit
        text += f" ({shown})"
    if arrow and name.direction is not None:
        up = name.direction == HIGHER
        text += (r" $\uparrow$" if up else r" $\downarrow$") if latex else (" ↑" if up else " ↓")
    return text


# Columns of the summary frames (AUC, Pareto, dense vs trivial, ranks): display name, scale to shown unit.
SUMMARY_COLUMNS: dict[str, tuple[str, float]] = {
    "dataset": ("Dataset", 1.0),
    "tasks": ("Tasks", 1.0),
    "arch": ("Arch", 1.0),
    "width": ("Width", 1.0),
    "head_width": ("Head width", 1.0),
    "protocol": ("Protocol", 1.0),
    "method": ("Method", 1.0),
    "target_sparsity": ("Target (%)", 100.0),
    "n_targets": ("Targets", 1.0),
    "n_points": ("Points", 1.0),
    "n_seeds": ("Seeds", 1.0),
    "n_blocks": ("Blocks", 1.0),
    "sparsity_min": ("Sparsity from (%)", 100.0),
    "sparsity_max": ("Sparsity to (%)", 100.0),
    "auc": ("ΔT area (% × sparsity)", 1.0),
    "auc_normalised": ("Mean ΔT over the range (%)", 1.0),
    "complete": ("Every target", 1.0),
    "dominated": ("Dominated", 1.0),
    "dominated_by": ("Dominated by", 1.0),
    "metric": ("Metric", 1.0),
    "converged": ("Converged", 1.0),
    "convergence_drop": ("Loss drop in the last 20% (%)", 100.0),
    "mean_rank": ("Mean rank", 1.0),
    "mean_value": ("Mean ΔT (%)", 1.0),
    "wins": ("Wins", 1.0),
    "method_a": ("Method", 1.0),
    "method_b": ("Against", 1.0),
    "n_pairs": ("Seed pairs", 1.0),
    "mean_a": ("Mean ΔT (%)", 1.0),
    "mean_b": ("Mean ΔT of the best (%)", 1.0),
    "diff_mean": ("Difference (%)", 1.0),
    "ci_low": ("95% CI low", 1.0),
    "ci_high": ("95% CI high", 1.0),
    "excludes_zero": ("CI excludes 0", 1.0),
    "seed_a": ("Seed A", 1.0),
    "seed_b": ("Seed B", 1.0),
    "n_methods": ("Methods", 1.0),
    "tau": ("Kendall τ", 1.0),
    "p_value": ("p", 1.0),
}


def display_frame(frame: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """A summary frame as a page shows it: display names and units for its columns, values scaled (a
    fraction in %), datasets, architectures and metric columns by their display names. ``<metric>.mean``
    columns, metrics in a ``metric`` column and ``dense``/``trivial`` values follow the metric's unit."""
    out = pd.DataFrame(index=frame.index)
    metric_values = frame["metric"].astype(str) if "metric" in frame else None
    for column in frame.columns:
        values = frame[column]
        if column in ("dense", "trivial") and metric_values is not None:
            scales = metric_values.map(lambda m: column_scale(m, dataset))
            out[column.capitalize()] = pd.to_numeric(values, errors="coerce") * scales
        elif column == "metric":
            out["Metric"] = values.map(lambda m: column_label(str(m), dataset))
        elif column == "dataset":
            out["Dataset"] = values.map(lambda d: dataset_title(str(d)))
        elif column == "arch":
            out["Arch"] = values.map(lambda a: arch_title(str(a)))
        elif str(column).endswith(".mean"):
            metric = str(column).removesuffix(".mean")
            out[column_label(metric, dataset)] = pd.to_numeric(values, errors="coerce") * column_scale(
                metric, dataset
            )
        elif column in SUMMARY_COLUMNS:
            name, scale = SUMMARY_COLUMNS[column]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            out[name] = values * scale if numeric and scale != 1.0 else values
        else:
            out[str(column)] = values
    if len(out.columns) != len(frame.columns):
        raise ValueError(f"two columns of {list(frame.columns)} have the same display name")
    return out
