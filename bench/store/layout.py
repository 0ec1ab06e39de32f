"""The content-addressed result store: ``<store>/runs/<run_id>/`` with atomic writes.

``result.json`` is written last and atomically; its presence means the stage is done. ``status.json``
records running/failed states (with the error) for `mtlprune status`. Both are typed records
(:mod:`mtlprune.store.records`), validated when written and when read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mtlprune.store.records import (
    CellResult,
    DenseResult,
    StageResult,
    StatusRecord,
    parse_result,
    parse_status,
)

DEFAULT_STORE = Path("results")  # relative to where a command runs
RESULT = "result.json"
STATUS = "status.json"
SPEC = "spec.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None


def read_result(path: Path) -> DenseResult | CellResult:
    """A ``result.json`` file as its typed record (a clear error naming the file otherwise)."""
    return parse_result(read_json(path), path)


def read_status(path: Path) -> StatusRecord:
    """A ``status.json`` file as its typed record (a clear error naming the file otherwise)."""
    return parse_status(read_json(path), path)


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def is_done(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / RESULT).is_file()

    def result(self, run_id: str) -> DenseResult | CellResult:
        path = self.run_dir(run_id) / RESULT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stage {run_id} has no result (not run yet, or it failed)")
        return read_result(path)

    def write_result(self, run_id: str, result: StageResult) -> None:
        """Write ``result.json`` atomically: from now on the stage is done."""
        if result.run_id != run_id:
            raise ValueError(f"result of {result.run_id} written to stage {run_id}")
        atomic_write_json(self.run_dir(run_id) / RESULT, result.payload())

    def status(self, run_id: str) -> str:
        """done / failed / running / pending."""
        if self.is_done(run_id):
            return "done"
        record = self.status_record(run_id)
        return "pending" if record is None else record.status

    def status_record(self, run_id: str) -> StatusRecord | None:
        """The stage's ``status.json`` (None when it has none)."""
        path = self.run_dir(run_id) / STATUS
        return read_status(path) if path.is_file() else None

    def write_status(self, run_id: str, **fields: Any) -> StatusRecord:
        """Write ``status.json`` atomically from the fields of a :class:`StatusRecord`; returns it."""
        record = StatusRecord(**fields)
        atomic_write_json(self.run_dir(run_id) / STATUS, record.payload())
        return record
