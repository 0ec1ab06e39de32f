"""Where a store's files live and how they are written: atomically, with the process umask.

``result.json`` is written last; a valid one whose recorded files are intact means the stage is done
(:mod:`mtlprune.store.integrity`). ``status.json`` records running/failed states (with the error) for
`mtlprune status`. Both are typed records (:mod:`mtlprune.store.records`), validated when written and read.
Every file is written through a temp file in the same folder, fsync and ``os.replace``, and gets the mode a
plain ``open`` would give it (``0o666`` less the umask): a store shared by a group on a cluster stays
readable by the group.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mtlprune.spec.load import read_utf8
from mtlprune.store.records import (
    CellResult,
    DenseResult,
    StatusRecord,
    parse_result,
    parse_status,
)

DEFAULT_STORE = Path("results")  # relative to where a command runs
RESULT = "result.json"
STATUS = "status.json"
SPEC = "spec.json"
CHECKPOINT = "checkpoint.pt"  # a running stage's in-stage checkpoint (mtlprune.engine.checkpoint)
CHECKPOINT_INFO = "checkpoint.json"  # where that checkpoint is (call, step, time), readable without torch


def process_umask() -> int:
    """The process umask (Linux: read from /proc without changing it; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + os.replace: readers never see a partial file.

    The temp file is created 0600 (mkstemp); it gets the mode ``open`` would give before it is renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
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
    """A JSON file's value; a clear error naming the file when it is not UTF-8 JSON."""
    text = read_utf8(path, ValueError, "expected a JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None


def read_result(path: Path) -> DenseResult | CellResult:
    """A ``result.json`` file as its typed record (a clear error naming the file otherwise)."""
    return parse_result(read_json(path), path)


def read_status(path: Path) -> StatusRecord:
    """A ``status.json`` file as its typed record (a clear error naming the file otherwise)."""
    return parse_status(read_json(path), path)
