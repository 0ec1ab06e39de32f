"""The result store: ``<store>/runs/<run_id>/``, one folder per stage, read and written through ``Store``.

A stage is done when its result is intact (:mod:`mtlprune.store.integrity`): ``is_done``, ``status`` and
``result`` all decide from ``result.json`` and the files it records, never from ``status.json`` alone, so a
finished result is visible to every reader and a damaged one is never taken for a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlprune.store.integrity import (
    DAMAGED,
    Problem,
    StageFiles,
    inspect_stage,
    set_aside,
    store_root_problems,
)
from mtlprune.store.layout import RESULT, STATUS, atomic_write_json, read_status
from mtlprune.store.records import CellResult, DenseResult, StageResult, StatusRecord


class StoreError(ValueError):
    """A store folder that cannot be used; the message names the path and what was expected."""


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def require_usable(self, write: bool) -> None:
        """Raise :class:`StoreError` naming the path when the store cannot be read (or written)."""
        problems = store_root_problems(self.root, write)
        if problems:
            raise StoreError(f"store {problems[0].path}: {problems[0].what}")

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def inspect(self, run_id: str, deep: bool = False) -> StageFiles:
        """The stage's folder read once: its result when intact, its status, every problem."""
        return inspect_stage(self.run_dir(run_id), deep=deep)

    def is_done(self, run_id: str) -> bool:
        """Whether the stage has an intact result (checked on every call: it is cheap)."""
        if not (self.run_dir(run_id) / RESULT).is_file():
            return False
        return self.inspect(run_id).status == "done"

    def result(self, run_id: str) -> DenseResult | CellResult:
        state = self.inspect(run_id)
        if state.result is None:
            path = self.run_dir(run_id) / RESULT
            if state.damaged:
                raise ValueError("; ".join(p.line() for p in state.damaged))
            raise FileNotFoundError(f"{path}: stage {run_id} has no result (not run yet, or it failed)")
        return state.result  # type: ignore[return-value]

    def write_result(self, run_id: str, result: StageResult) -> None:
        """Write ``result.json`` atomically: from now on the stage is done."""
        if result.run_id != run_id:
            raise ValueError(f"result of {result.run_id} written to stage {run_id}")
        atomic_write_json(self.run_dir(run_id) / RESULT, result.payload())

    def status(self, run_id: str) -> str:
        """done / damaged / failed / running / pending."""
        return self.inspect(run_id).status

    def damage(self, run_id: str, deep: bool = False) -> list[Problem]:
        """Why the stage's stored result cannot be used (empty when it is intact or there is none)."""
        return self.inspect(run_id, deep=deep).damaged

    def set_aside(self, run_id: str, problems: list[Problem]) -> Path | None:
        """Move a damaged result under ``runs/<id>/damaged/<time>/`` (never deleted): the stage runs again."""
        return set_aside(self.run_dir(run_id), problems)

    def status_record(self, run_id: str) -> StatusRecord | None:
        """The stage's ``status.json`` (None when it has none)."""
        path = self.run_dir(run_id) / STATUS
        return read_status(path) if path.is_file() else None

    def write_status(self, run_id: str, **fields: Any) -> StatusRecord:
        """Write ``status.json`` atomically from the fields of a :class:`StatusRecord`; returns it."""
        record = StatusRecord(**fields)
        atomic_write_json(self.run_dir(run_id) / STATUS, record.payload())
        return record


__all__ = ["DAMAGED", "Store", "StoreError"]
