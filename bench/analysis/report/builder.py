"""Writing a report's figures and tables as they are drawn, and noting each one that cannot be, with why."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlprune.store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mtlprune.analysis.html import Figure as HtmlFigure

# How many single-run figures (curves, mask heatmaps) one report draws at most: they illustrate, the
# comparison figures carry the results, and a 500-cell report must stay fast.
MAX_RUN_FIGURES = 4
SKIPPABLE = (ValueError, KeyError, FileNotFoundError)


@dataclass
class ReportOutcome:
    """What `build_report` wrote, and what it had to leave out (with the reason)."""

    out: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    counts: dict[str, int]
    notes: list[str]
    damaged: list[str] = field(default_factory=list)  # "<run id>: <path>: <what>" per damaged stage


class Builder:
    """Collects figures and tables as they are written, with the notes of what was skipped."""

    def __init__(self, out: Path, style: str) -> None:
        self.out, self.style = out, style
        self.figures: list[Path] = []
        self.tables: list[Path] = []
        self.notes: list[str] = []
        self.embedded: dict[str, list[Any]] = {}

    def figure(
        self, group: str | None, name: str, caption: str, draw: Callable[[], Figure]
    ) -> HtmlFigure | None:
        """Draws and writes one figure; it joins the Figures section under ``group`` (None: the caller
        places the returned figure itself). None, with a note, when it cannot be drawn."""
        from mtlprune.analysis.figures import SparseFigureWarning, save_figure
        from mtlprune.analysis.html import Figure as HtmlFigure

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SparseFigureWarning)
                fig = draw()
        except SKIPPABLE as exc:
            self.notes.append(f"figure {name} not drawn: {reason(exc)}")
            return None
        for warning in caught:
            if issubclass(warning.category, SparseFigureWarning):
                self.notes.append(f"figure {name} is nearly empty: {warning.message}")
                caption = f"{caption} (nearly empty: {warning.message})"
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )  # not ours to swallow
        paths = save_figure(fig, self.out / "figures" / name, style=self.style)
        self.figures += paths
        png = next(p for p in paths if p.suffix == ".png").read_bytes()
        files = [str(p.relative_to(self.out)) for p in paths]
        embedded = HtmlFigure(name, png, caption, files)
        if group is not None:
            self.embedded.setdefault(group, []).append(embedded)
        return embedded

    def table(self, name: str, markdown: str, latex: str) -> None:
        for suffix, text in ((".md", markdown), (".tex", latex)):
            path = self.out / "tables" / f"{name}{suffix}"
            atomic_write_bytes(path, text.encode("utf-8"))
            self.tables.append(path)


def reason(exc: BaseException) -> str:
    """An exception's message without the quotes KeyError puts around it."""
    return str(exc).strip("'\"")


def slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)
