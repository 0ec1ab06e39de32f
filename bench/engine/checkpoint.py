"""In-stage checkpoints: everything a killed stage needs to resume and end bit-exactly as if never killed.

A stage (the dense stage, or a cell's method) trains in one or more ``train()`` calls, numbered from 1 in the
order the stage makes them. ``<run>/checkpoint.pt`` holds the state at the start of one optimizer step of one
call: model, optimizer (and gradient scaler), held masks, the callbacks' own state (thresholds, sliding
windows, schedules, ...), the best-validation snapshot, the RNG states (python, numpy, torch, CUDA), the data
position (the step: batches are a pure function of (seed, step)), the log position, and the owner's state
(the method context: masks, steps used, recorded values, call counter). It is written atomically every
``runtime.checkpoint_every`` steps and at every phase boundary (the start and the end of each call), and it
loads with ``torch.load(weights_only=True)``.

Resuming replays the stage's code from the beginning: a call that finished before the checkpoint returns at
once without training (its effects come back with the checkpoint), the call the checkpoint belongs to restores
everything and continues from its step, and later calls run normally. So a method's state must live where a
checkpoint sees it: the model, the context (masks, ``record``, the log), or a callback's ``state_dict``.
"""

from __future__ import annotations

import contextlib
import io
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mtlprune.store import atomic_write_bytes, atomic_write_json
from mtlprune.store.layout import CHECKPOINT, CHECKPOINT_INFO

FORMAT = 1


class LogPosition(Protocol):
    """What a checkpoint needs from the stage's logger: where it is, and a way back there."""

    def position(self) -> dict[str, int]: ...

    def rewind(self, position: dict[str, int]) -> None: ...


def rng_state() -> dict[str, Any]:
    """Every global RNG a stage may draw from, in tensors and plain containers (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGINT or SIGTERM arriving inside the block takes effect right after it (main thread only).

    Around the writes of ``checkpoint.pt`` and ``checkpoint.json``: an interrupted stage says where it
    resumes from the second file, which must name the first's step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])  # to the handler in place again


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged or foreign file is a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); delete it to restart"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a checkpoint of format {FORMAT}; delete it to restart the stage")
    return payload


class StageCheckpoint:
    """The checkpoint file of one stage: loaded once when the stage starts, written during training.

    ``on_save`` (tests) is called with the payload after every save.
    """

    def __init__(self, run_dir: Path, every: int, log: LogPosition | None = None) -> None:
        self.path = run_dir / CHECKPOINT
        self.every, self.log = every, log
        self.loaded: dict[str, Any] | None = read_checkpoint(self.path) if self.path.is_file() else None
        self.saves = 0
        self.on_save: Callable[[dict[str, Any]], None] | None = None

    @property
    def resume_call(self) -> int | None:
        """The call a loaded checkpoint belongs to (None: nothing to resume)."""
        return None if self.loaded is None else int(self.loaded["call"])

    def skips(self, call: int) -> bool:
        """Whether call ``call`` finished before the checkpoint (resume replays it without training)."""
        return self.loaded is not None and call < int(self.loaded["call"])

    def take(self, call: int) -> dict[str, Any] | None:
        """The loaded checkpoint if it belongs to ``call`` (once): the log is rewound to its position."""
        if self.loaded is None or int(self.loaded["call"]) != call:
            return None
        payload, self.loaded = self.loaded, None
        if self.log is not None:
            self.log.rewind(payload["log"])
        return payload

    def for_call(self, call: int, owner_state: Callable[[], dict[str, Any]]) -> CallCheckpoint:
        return CallCheckpoint(self, call, owner_state)

    def save(self, payload: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        info = {"call": payload["call"], "step": payload["step"], "saved": time.time()}
        with interrupts_deferred():  # the two files always agree on where the stage resumes
            atomic_write_bytes(self.path, buffer.getvalue())
            atomic_write_json(self.path.with_name(CHECKPOINT_INFO), info)  # `mtlprune status`, interrupts
        self.saves += 1
        if self.on_save is not None:
            self.on_save(payload)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_name(CHECKPOINT_INFO).unlink(missing_ok=True)


class CallCheckpoint:
    """What one ``train()`` call sees: the state to resume from (if any) and how to save."""

    def __init__(self, stage: StageCheckpoint, call: int, owner_state: Callable[[], dict[str, Any]]) -> None:
        self.stage, self.call, self.owner_state = stage, call, owner_state
        self.every = stage.every
        self.resume: dict[str, Any] | None = None  # set by the owner from StageCheckpoint.take

    def due(self, step: int, steps: int) -> bool:
        """At each phase boundary (step 0 and the end) and every ``every`` steps."""
        return step == 0 or step == steps or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, train_state: dict[str, Any]) -> None:
        payload = {
            "format": FORMAT,
            "call": self.call,
            "step": step,
            "train": train_state,
            "owner": self.owner_state(),
            "rng": rng_state(),
            "log": self.stage.log.position() if self.stage.log is not None else {},
        }
        self.stage.save(payload)
