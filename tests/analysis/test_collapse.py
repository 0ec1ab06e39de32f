"""Layer collapse is reported: a cell whose masks prune whole layers says so (load columns, report)."""

from __future__ import annotations

import pandas as pd

from mtlprune.analysis.load import collapsed
from mtlprune.analysis.report.attention import collapse_lines
from mtlprune.analysis.report.attention import collapse_note as _collapse_note


def _layers(**sparsities: tuple[str, float]) -> dict:
    return {
        "layers": {
            name: {"component": component, "params": 8, "sparsity": s, "zeros": round(8 * s)}
            for name, (component, s) in sparsities.items()
        }
    }


def test_collapsed_counts_only_fully_pruned_layers() -> None:
    section = _layers(
        a=("backbone", 0.875),
        b=("head/normal", 1.0),
        c=("head/normal", 1.0),
        d=("head/depth_zbuffer", 1.0),
        e=("head/segment_semantic", 0.5),
    )
    assert collapsed(section) == (3, "head/depth_zbuffer,head/normal")
    assert collapsed(_layers(a=("backbone", 0.99))) == (0, "")
    assert collapsed({}) == (0, "")  # results without per-layer detail: nothing claimed


def test_report_names_collapsed_method_target_and_components() -> None:
    frame = pd.DataFrame(
        {
            "method": ["synflow", "synflow", "snip", "synflow"],
            "target_sparsity": [0.9, 0.9, 0.9, 0.7],
            "status": ["done", "done", "done", "failed"],
            "collapsed_layers": [24, 22, 0, None],
            "collapsed_components": ["head/normal", "head/depth_zbuffer,head/normal", "", None],
        }
    )
    lines = collapse_lines(frame)
    assert lines == [
        "synflow at 0.9: 22–24 layers pruned to zero density in head/depth_zbuffer, head/normal (2 seed(s)); "
        "a head with a fully pruned layer predicts a constant"
    ]
    note = _collapse_note(frame)
    assert "<li>synflow at 0.9: 2 seed(s), 22–24 layers" in note and "snip" not in note
    assert _collapse_note(frame[frame["method"] == "snip"]) == ""
