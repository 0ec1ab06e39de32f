"""``<store>/events.jsonl``: one line per claim, finish, takeover, loss, interruption or submission.

Every worker (local pool, ``mtlprune run`` processes side by side, Slurm tasks) appends with a single
``O_APPEND`` write, so lines never interleave; tests and the local pool read them back to see what ran where.
"""

from __future__ import annotations

import json
import os
import time
import warnings
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
    """Reads the lines appended to ``events.jsonl`` since the last call.

    The log is informational (who ran what, when): a line that is not a JSON object (a damaged file, a
    foreign write) is skipped with a warning naming the file and line, never a reason to stop a run;
    ``mtlprune store check`` lists it too.
    """

    def __init__(self, store: Store) -> None:
        self.path = store.root / EVENTS
        self.offset = 0
        self.lines = 0  # complete lines read so far (for the line numbers of warnings)

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        events = []
        for raw in data[:end].split(b"\n")[:-1]:
            self.lines += 1
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                event = None
            if isinstance(event, dict) and "event" in event and "run_id" in event:
                events.append(event)
            else:
                shown = raw[:60].decode("utf-8", "replace")
                warnings.warn(
                    f"{self.path}: line {self.lines} is not an event record ({shown!r}); skipped",
                    EventLogWarning,
                    stacklevel=2,
                )
        return events


class EventLogWarning(UserWarning):
    """A line of ``events.jsonl`` that is not an event record (skipped)."""
