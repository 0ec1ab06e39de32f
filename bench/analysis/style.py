"""House style of the figures: one colour and marker per method everywhere, and paper/screen sizes.

A reader compares methods across figures by colour and marker, so a method must keep both in every figure
of a report and, as far as possible, across reports. Colours come from Paul Tol's *muted* scheme, nine
colours that stay distinct under the common colour-vision deficiencies; black and grey are not among them:
they are reserved for references (the dense model, targets, totals). :class:`StyleMap` gives each method of
the built-in roster a preferred slot (its place in :data:`ROSTER`), so ``adapmtl`` is the same rose in every
figure it is drawn in; labels outside the roster (a method with non-default parameters, a third-party
plugin) prefer a slot from a hash of the label. Slot ``s`` is colour ``PALETTE[s % 9]`` and marker
``MARKERS[s % 11]`` (coprime lengths: 99 distinct pairs). Within one map, colours are distinct while there
are no more methods than colours (a method whose preferred colour is taken moves to the first free one),
and (colour, marker) pairs are always distinct; bars, which have no marker, get a hatch when a colour is
shared (:attr:`MethodStyle.hatch`). Build one map per figure set, so a method looks the same in each.

Paper style follows the usual two-column venues (CVPR, ICCV, NeurIPS, IEEE): figures 3.3 in (one column) or
7 in (two columns) wide, 8 pt serif text in a Times-like face (Times New Roman, Nimbus Roman or
matplotlib's bundled STIX, the first installed) with STIX math, 300-dpi PNG; TrueType fonts are embedded in
PDFs (``pdf.fonttype`` 42) so text stays vector, searchable and editable. Screen style is larger sans-serif
text on wider figures for the HTML report.
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
    "HATCHES",
    "MARKERS",
    "PALETTE",
    "REFERENCE_COLOR",
    "ROSTER",
    "STYLES",
    "FigureStyle",
    "MethodStyle",
    "StyleMap",
    "base_name",
    "figure_style",
    "style_context",
]

# Paul Tol's muted qualitative scheme (colour-blind safe), ordered so that the roster's first nine differ.
PALETTE: tuple[str, ...] = (
    "#332288",  # indigo
    "#88CCEE",  # cyan
    "#117733",  # green
    "#CC6677",  # rose
    "#DDCC77",  # sand
    "#AA4499",  # purple
    "#44AA99",  # teal
    "#882255",  # wine
    "#999933",  # olive
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*")
# Bars have no marker: the n-th method of a map that shares a colour gets the n-th hatch.
HATCHES: tuple[str, ...] = ("", "////", "\\\\\\\\", "xxxx", "....", "oo", "++", "----", "||||", "**", "OO")
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
DENSE_COLOR = "0.35"  # grey: the dense reference
REFERENCE_COLOR = "black"  # totals and other references inside one run's curves
DENSE_LABEL = "dense"


@dataclass(frozen=True)
class MethodStyle:
    color: str
    marker: str
    hatch: str = ""

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
    """Method label → :class:`MethodStyle`: distinct within the map, stable for the roster's first methods.

    Build one map from every method label of a report and pass it to every figure: then a method has the
    same colour and marker in each of them. Labels claim slots in priority order (roster methods by roster
    place, then the rest sorted); each takes its preferred slot when that slot's colour is still free in the
    map, else the first free colour (keeping its marker), else (every colour used) its preferred slot or the
    next one whose (colour, marker) pair is free. Looking up a label the map does not hold falls back to a
    label of the map with the same method name (a published ``lth`` takes the colour of the run
    ``lth(rate=0.9)``), else to the label's own preferred slot.
    """

    def __init__(self, labels: Iterable[str]) -> None:
        unique = sorted(set(labels) - {DENSE_LABEL})
        if len(unique) > N_SLOTS:
            raise ValueError(
                f"{len(unique)} methods in one figure set; at most {N_SLOTS} have distinct styles"
            )
        roster = sorted((lab for lab in unique if lab in ROSTER), key=ROSTER.index)
        # A variant of a roster method (gmp(frequency=10)) comes right after the roster names.
        variants = [lab for lab in unique if lab not in ROSTER and base_name(lab) in ROSTER]
        others = [lab for lab in unique if lab not in ROSTER and base_name(lab) not in ROSTER]
        self._styles: dict[str, MethodStyle] = {}
        taken: set[int] = set()
        colours_used: dict[str, int] = {}
        for label in [*roster, *variants, *others]:
            slot = self._claim(_preferred_free(label, taken), taken, colours_used)
            taken.add(slot)
            colour = PALETTE[slot % len(PALETTE)]
            hatch = HATCHES[colours_used.get(colour, 0)]
            colours_used[colour] = colours_used.get(colour, 0) + 1
            self._styles[label] = MethodStyle(colour, MARKERS[slot % len(MARKERS)], hatch)

    @staticmethod
    def _claim(slot: int, taken: set[int], colours_used: dict[str, int]) -> int:
        if PALETTE[slot % len(PALETTE)] not in colours_used:
            return slot
        free = [i for i, c in enumerate(PALETTE) if c not in colours_used]
        if free:  # keep the marker of the preferred slot, take the first free colour
            marker = slot % len(MARKERS)
            return next(
                s for s in range(N_SLOTS) if s % len(PALETTE) == free[0] and s % len(MARKERS) == marker
            )
        while slot in taken:
            slot = (slot + 1) % N_SLOTS
        return slot

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


def _preferred_free(label: str, taken: set[int]) -> int:
    """The label's preferred slot; a variant whose method's slot is taken prefers its own hashed slot."""
    slot = _preferred(label)
    if slot in taken and label not in ROSTER:
        slot = _hash_slot(label)
    return slot


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

    serif: bool = False

    def rc(self) -> dict[str, Any]:
        fonts: dict[str, Any] = (
            {
                "font.family": "serif",
                "font.serif": ["Times New Roman", "Times", "Nimbus Roman", "STIXGeneral", "DejaVu Serif"],
                "mathtext.fontset": "stix",
            }
            if self.serif
            else {"font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans"}  # has Δ, ↑, ↓
        )
        return {
            "pdf.fonttype": 42,  # TrueType embedded: vector, searchable, editable text
            "ps.fonttype": 42,
            "svg.fonttype": "none",
            **fonts,
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
    "paper": FigureStyle("paper", 3.3, 7.0, 1.45, 8.0, 1.0, 3.5, 300, serif=True),
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
