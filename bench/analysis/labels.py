"""Display names of the analysis layer's columns and settings: one vocabulary for tables and figures.

Metric names, units and display scales come from the datasets' vocabularies
(:func:`mtlprune.vocabulary.metric_name`); this module adds the columns every dataset shares (ΔT/Δm, the
sparsities, costs) and the display names of datasets and architectures, and composes them: a figure axis
reads ``Seg mIoU (%) ↑`` and a table header ``Seg mIoU ↑`` (its units go into the caption), both from
:func:`column_label`. Values are shown times :func:`column_scale` (fractions as %).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlprune.analysis.latex import latex_escape
from mtlprune.vocabulary import DIRECTIONS, HIGHER, dataset_title, metric_name, task_name

__all__ = [
    "ARCH_NAMES",
    "ColumnName",
    "arch_title",
    "column_label",
    "column_name",
    "column_scale",
    "setting_title",
]

# Built-in architectures as the papers write them; a plugin architecture is shown by its registered name.
ARCH_NAMES: dict[str, str] = {
    "deeplab_resnet34": "Deeplab-ResNet34",
    "mobilenetv2": "MobileNetV2",
    "resnet18_mtl": "ResNet-18",
}
DELTA_NAMES: dict[str, tuple[str, str]] = {  # column → (text, LaTeX)
    "delta_t": ("ΔT", r"$\Delta_T$"),
    "delta_m": ("Δm", r"$\Delta_m$"),
    "delta_t_control": ("ΔT vs control", r"$\Delta_T$ vs control"),
    "delta_m_control": ("Δm vs control", r"$\Delta_m$ vs control"),
}


@dataclass(frozen=True)
class ColumnName:
    """A column as shown: ``text`` and ``latex`` (escaped, ready to typeset), ``unit``, ``scale`` (shown =
    stored × scale), ``direction`` (+1 higher is better, −1 lower, None: neither, e.g. a sparsity)."""

    text: str
    latex: str
    unit: str
    scale: float
    direction: int | None


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
        latex = f"{latex_escape(shown)} {name.latex if name.latex is not None else latex_escape(name.text)}"
        return ColumnName(f"{shown} {name.text}", latex, name.unit, name.scale, DIRECTIONS[column])
    if column in DELTA_NAMES:
        text, latex = DELTA_NAMES[column]
        return ColumnName(text, latex, "%", 1.0, HIGHER)
    for prefix in ("delta_t.", "delta_m."):
        if column.startswith(prefix):
            text, latex = DELTA_NAMES[prefix[:-1]]
            task = task_name(column.removeprefix(prefix))
            return ColumnName(f"{text} {task}", f"{latex} {latex_escape(task)}", "%", 1.0, HIGHER)
    if column == "achieved_sparsity":
        return ColumnName("Sparsity", "Sparsity", "%", 100.0, None)
    if column == "target_sparsity":
        return ColumnName("Target", "Target", "%", 100.0, None)
    if column == "sparsity.backbone":
        return ColumnName("Sp. backbone", "Sp. backbone", "%", 100.0, None)
    for kind in ("head", "path"):
        prefix = f"sparsity.{kind}."
        if column.startswith(prefix):
            text = f"Sp. {task_name(column.removeprefix(prefix))} {kind}"
            return ColumnName(text, latex_escape(text), "%", 100.0, None)
    return ColumnName(column, latex_escape(column), "", 1.0, None)


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
