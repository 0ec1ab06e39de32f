"""Training logs (``<run>/log.jsonl``) as tidy frames on one step axis, and which columns hold what.

The runner appends one JSON record per logged step (``phase``, ``step``, ``loss``, ``loss.<task>``, ``lr``
and the method's own scalars such as ``adapmtl.sparsity``, ``adapmtl.threshold.<group>``,
``gmp.sparsity``) and one record per method event (no ``step``). A method's steps restart at 0 in each
training call and phase, so plotting against ``step`` would fold the phases onto each other:
:func:`read_log` adds ``x``, a step counter that keeps increasing across phases and rounds (events sit at
the position of the last step before them), which is what the curves are drawn against. While the logged
steps increase, ``x`` is the logged step itself (a log of steps 0, 4, 7 is drawn at 0, 4, 7, even across a
phase change); only where a step restarts (is not above the one before) does ``x`` continue after the last
position.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "LOG",
    "component_sparsity_columns",
    "load_log",
    "loss_columns",
    "overall_sparsity_columns",
    "read_log",
    "threshold_columns",
]

LOG = "log.jsonl"
_OVERALL = re.compile(r"^(?:[A-Za-z0-9_-]+\.)?sparsity$")
_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+\.sparsity\.(?P<part>.+)$")
_THRESHOLD = re.compile(r"^[A-Za-z0-9_-]+\.threshold\.(?P<part>.+)$")


def read_log(path: str | Path) -> pd.DataFrame:
    """One row per record in file order, with ``x`` (cumulative step), ``phase``, ``step`` and every scalar.

    A record that is not a JSON object is an error naming the file and line, except a last line without
    its newline: that is a record being written by a live run, and it is left out.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    partial_tail = not text.endswith("\n")
    records: list[dict[str, Any]] = []
    offset, last_x, previous = 0, 0, None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if partial_tail and number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool):
            if previous is not None and step <= previous:
                offset = last_x + 1  # the step restarts (a new phase or round): continue after the last x
            last_x = offset + int(step)
            previous = step
        records.append({"x": last_x, **record})
    frame = pd.DataFrame(records)
    for column in ("x", "phase", "step"):
        if column not in frame:
            frame[column] = math.nan if column != "phase" else None
    return frame


def load_log(store: str | Path, run_id: str) -> pd.DataFrame:
    """The log of run ``run_id`` of a store (:func:`read_log`)."""
    path = Path(store) / "runs" / run_id / LOG
    if not path.is_file():
        raise FileNotFoundError(f"run {run_id}: no {LOG} at {path} (the run has not started, or was removed)")
    return read_log(path)


def _numeric(log: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(log[column]) and bool(log[column].notna().any())


def loss_columns(log: pd.DataFrame) -> dict[str, str]:
    """Task → its loss column (``loss.<task>``), in logged order."""
    return {c.removeprefix("loss."): c for c in log.columns if c.startswith("loss.") and _numeric(log, c)}


def overall_sparsity_columns(log: pd.DataFrame) -> list[str]:
    """Columns holding the overall sparsity during training (``sparsity``, ``<method>.sparsity``)."""
    return [c for c in log.columns if _OVERALL.match(str(c)) and _numeric(log, c)]


def component_sparsity_columns(log: pd.DataFrame) -> dict[str, str]:
    """Component (``backbone``, ``head.<task>``) → its sparsity column (``<method>.sparsity.<component>``)."""
    out = {}
    for column in log.columns:
        match = _COMPONENT.match(str(column))
        if match and _numeric(log, column):
            out[match["part"]] = column
    return out


def threshold_columns(log: pd.DataFrame) -> dict[str, str]:
    """Group → its learned-threshold column (``<method>.threshold.<group>``)."""
    out = {}
    for column in log.columns:
        match = _THRESHOLD.match(str(column))
        if match and _numeric(log, column):
            out[match["part"]] = column
    return out
