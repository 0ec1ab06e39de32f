"""A failed stage's record: what kind of failure, the error, traceback and the last lines of its log."""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from mtlprune.engine.divergence import Divergence
from mtlprune.store import Store
from mtlprune.store.records import StatusRecord

LOG_TAIL_LINES = 20


def failure_kind(exc: BaseException) -> str:
    """``diverged`` for a non-finite loss, ``oom`` for an out-of-memory error, ``error`` otherwise."""
    if isinstance(exc, Divergence):
        return "diverged"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return "oom"  # allocator errors of other backends (MPS, CPU allocators) say so in the message
    return "error"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"): status.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a stage's log.jsonl (empty when it has none)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def record_failure(store: Store, run_id: str, exc: BaseException, kind: str | None = None) -> StatusRecord:
    """Mark a stage failed in its status.json: kind, error, traceback, the last log lines; returns it."""
    return store.write_status(
        run_id,
        status="failed",
        kind=kind or failure_kind(exc),
        divergence=json_safe(exc.details) if isinstance(exc, Divergence) else None,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
        log_tail=log_tail(store.run_dir(run_id)),
        host=socket.gethostname(),
        pid=os.getpid(),
        finished=time.time(),
    )
