"""House style of the figures: one colour and marker per method everywhere, and paper/screen sizes.

A reader compares methods across figures by colour and marker, so a method must keep both in every figure
of a report and, as far as possible, across reports. :class:`StyleMap` therefore gives each method of the
built-in roster a fixed slot (its place in :data:`ROSTER`), so ``adapmtl`` is the same red in every
figure ever made; labels outside the roster (a method with non-default parameters, a third-party plugin)
get a slot from a hash of the label, probing to the next free slot so that no two methods of one map ever
share a (colour, marker) pair. Slot ``s`` is drawn as colour ``PALETTE[s % 10]`` and marker
``MARKERS[s % 11]``: the lengths are coprime, so 110 slots are distinct pairs.

Paper style follows the usual two-column venues: figures 3.3 in (one column) or 6.9 in (two columns) wide,
7 pt text, 300-dpi PNG; TrueType fonts are embedded in PDFs (``pdf.fonttype`` 42) so text stays vector,
searchable and editable. Screen style is larger text on wider figures for the HTML report.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import matplotlib

__all__ = [
    "DENSE_COLOR",
    "MARKERS",
    "PALETTE",
    "ROSTER",
    "STYLES",
    "FigureStyle",
    "MethodStyle",
    "StyleMap",
    "base_name",
    "figure_style",
    "style_context",
]

# tab10 without its grey (grey is the dense reference), with black in its place; colour-blind tolerable.
PALETTE: tuple[str, ...] = (
    "#1f77b4",  # blue
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#d62728",  # red
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#bcbd22",  # olive
    "#17becf",  # cyan
    "#000000",  # black
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*")
N_SLOTS = len(PALETTE) * len(MARKERS)
# Fixed slots of the built-in methods: the first ten (the ones most figures show) get distinct colours.
ROSTER: tuple[str, ...] = (
    "magnitude",
    "lth",
    "gmp",
    "adapmtl",
    "disparse-static",
    "snip",
    "rigl",
    "disparse-dynamic",
    "imp",
    "random",
    "grasp",
    "synflow",
    "disparse-pretrained",
    "adapmtl-single-threshold",
    "adapmtl-fixed-weights",
    "str",
)
DENSE_COLOR = "0.35"
DENSE_LABEL = "dense"


@dataclass(frozen=True)
class MethodStyle:
    color: str
    marker: str

    def line_kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "marker": self.marker}


def base_name(label: str) -> str:
    """The registered method name of a label: ``gmp(frequency=10)`` → ``gmp``."""
    return label.split("(", 1)[0]


def _slot_style(slot: int) -> MethodStyle:
    return MethodStyle(PALETTE[slot % len(PALETTE)], MARKERS[slot % len(MARKERS)])


def _hash_slot(label: str) -> int:
    """A slot outside the roster's, stable across processes (crc32, not Python's salted hash)."""
    return len(ROSTER) + zlib.crc32(label.encode()) % (N_SLOTS - len(ROSTER))


def _preferred(label: str) -> int:
    base = base_name(label)
    return ROSTER.index(base) if base in ROSTER else _hash_slot(label)


class StyleMap:
    """Method label → :class:`MethodStyle`, distinct within the map, stable for roster methods.

    Build one map from every method label of a report and pass it to every figure: then a method has the
    same colour and marker in each of them. Looking up a label the map does not hold falls back to a
    label of the map with the same method name (a published ``lth`` takes the colour of the run
    ``lth(rate=0.9)``), else to the label's own preferred slot.
    """

    def __init__(self, labels: Iterable[str]) -> None:
        unique = sorted(set(labels) - {DENSE_LABEL})
        self._styles: dict[str, MethodStyle] = {}
        taken: set[int] = set()
        if len(unique) > N_SLOTS:
            raise ValueError(
                f"{len(unique)} methods in one figure set; at most {N_SLOTS} have distinct styles"
            )
        # Roster names claim their fixed slots first, so a variant or plugin never displaces them.
        for label in (lab for lab in unique if lab in ROSTER):
            taken.add(ROSTER.index(label))
            self._styles[label] = _slot_style(ROSTER.index(label))
        for label in (lab for lab in unique if lab not in ROSTER):
            base = base_name(label)
            # The first variant of a roster method takes the method's slot when the plain name is absent.
            slot = (
                ROSTER.index(base)
                if base in ROSTER and ROSTER.index(base) not in taken
                else _hash_slot(label)
            )
            while slot in taken:
                slot = (slot + 1) % N_SLOTS
            taken.add(slot)
            self._styles[label] = _slot_style(slot)

    @property
    def labels(self) -> list[str]:
        return sorted(self._styles)

    def __contains__(self, label: object) -> bool:
        return label in self._styles

    def __getitem__(self, label: str) -> MethodStyle:
        if label in self._styles:
            return self._styles[label]
        same_method = sorted(lab for lab in self._styles if base_name(lab) == base_name(label))
        if same_method:
            return self._styles[same_method[0]]
        return _slot_style(_preferred(label))


@dataclass(frozen=True)
class FigureStyle:
    """Sizes (inches), text and line sizes, and the PNG resolution of one output style."""

    name: str
    one_column: float
    two_columns: float
    panel_height: float
    font_size: float
    line_width: float
    marker_size: float
    dpi: int

    def width(self, columns: Literal[1, 2]) -> float:
        if columns not in (1, 2):
            raise ValueError(f"columns must be 1 or 2, got {columns!r}")
        return self.one_column if columns == 1 else self.two_columns

    def rc(self) -> dict[str, Any]:
        return {
            "pdf.fonttype": 42,  # TrueType embedded: vector, searchable, editable text
            "ps.fonttype": 42,
            "svg.fonttype": "none",
            "font.family": "DejaVu Sans",  # has Δ, ↑, ↓
            "font.size": self.font_size,
            "axes.titlesize": self.font_size,
            "axes.labelsize": self.font_size,
            "xtick.labelsize": self.font_size - 1,
            "ytick.labelsize": self.font_size - 1,
            "legend.fontsize": self.font_size - 1,
            "figure.titlesize": self.font_size + 1,
            "lines.linewidth": self.line_width,
            "lines.markersize": self.marker_size,
            "axes.linewidth": 0.6,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.5,
            "savefig.dpi": self.dpi,
        }


STYLES: dict[str, FigureStyle] = {
    "paper": FigureStyle("paper", 3.3, 6.9, 1.45, 7.0, 1.0, 3.5, 300),
    "screen": FigureStyle("screen", 5.5, 11.0, 2.6, 10.0, 1.5, 5.0, 110),
}


def figure_style(style: str | FigureStyle) -> FigureStyle:
    if isinstance(style, FigureStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError(f"unknown figure style {style!r}; allowed: {', '.join(STYLES)}") from None


@contextmanager
def style_context(style: str | FigureStyle) -> Iterator[FigureStyle]:
    """Matplotlib rc settings of ``style`` for the figures built (and saved) inside the block."""
    resolved = figure_style(style)
    with matplotlib.rc_context(resolved.rc()):
        yield resolved
