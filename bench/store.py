"""The content-addressed result store: ``<store>/runs/<run_id>/`` with atomic writes.

``result.json`` is written last and atomically; its presence means the stage is done. ``status.json``
records running/failed states (with the error) for `mtlprune status`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def is_done(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / RESULT).is_file()

    def result(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / RESULT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stage {run_id} has no result (not run yet, or it failed)")
        return read_json(path)

    def status(self, run_id: str) -> str:
        """done / failed / running / pending."""
        if self.is_done(run_id):
            return "done"
        path = self.run_dir(run_id) / STATUS
        if path.is_file():
            return str(read_json(path).get("status", "pending"))
        return "pending"

    def status_record(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / STATUS
        return read_json(path) if path.is_file() else {}

    def write_status(self, run_id: str, **payload: Any) -> None:
        atomic_write_json(self.run_dir(run_id) / STATUS, payload)
