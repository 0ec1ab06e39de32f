"""``<store>/events.jsonl``: one line per claim, finish, takeover, loss, interruption or submission.

Every worker (local pool, ``mtlprune run`` processes side by side, Slurm tasks) appends with a single
``O_APPEND`` write, so lines never interleave; tests and the local pool read them back to see what ran where.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from mtlprune.execution.locks import HOST
from mtlprune.store import Store

EVENTS = "events.jsonl"


def log_event(store: Store, event: str, run_id: str, **fields: Any) -> None:
    """Append one line to ``<store>/events.jsonl`` (a single O_APPEND write, so lines never interleave)."""
    record = {"event": event, "run_id": run_id, "time": time.time(), "host": HOST, "pid": os.getpid()}
    record.update({k: v for k, v in fields.items() if v is not None})
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    store.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(store.root / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(store: Store) -> list[dict[str, Any]]:
    """Every complete line of ``<store>/events.jsonl`` (empty when there is none)."""
    return EventTail(store).read()


class EventTail:
    """Reads the lines appended to ``events.jsonl`` since the last call."""

    def __init__(self, store: Store) -> None:
        self.path = store.root / EVENTS
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]
