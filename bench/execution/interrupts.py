"""Ctrl-C and SIGTERM: one line per interrupted stage saying where it resumes, locks released, exit 130/143.

A worker that is interrupted while it runs a stage (mtlprune.execution.claim) lets the stage unwind (its
checkpoint stays), releases the stage's lock, logs an ``interrupted`` event with the stage's line and raises
:class:`Interrupted`. In a local pool the workers never see Ctrl-C (they ignore SIGINT from their start):
the parent forwards either signal to them as SIGTERM, waits for them, and raises :class:`Interrupted` with
the lines of their events. ``mtlprune run`` prints the lines and exits with 128 + the signal's number (130,
143), without a traceback. The line names the checkpoint the next run resumes from
(``<run>/checkpoint.json``)::

    interrupted; cell 2986ae74c3d2957b (magnitude@0.5 seed 0) resumes from step 40
    interrupted; cell 464606b423edbb6d (imp@0.9 seed 0) resumes from step 20 of training call 2
    interrupted; dense 6258287f5b52aa79 (nyuv2 deeplab_resnet34 seed 0) starts again (no checkpoint yet)

Torch-free: ``mtlprune`` imports it before any command runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mtlprune.store.layout import CHECKPOINT, CHECKPOINT_INFO

NOTHING_RUNNING = "interrupted; no stage was running"


class Interrupted(BaseException):
    """A run stopped by SIGINT or SIGTERM: ``lines`` (one per interrupted stage) and ``code`` (128 + signal).

    A ``BaseException``, like the ``KeyboardInterrupt``/``SystemExit`` it replaces, so that no ``except
    Exception`` on the way up records it as a stage's failure.
    """

    def __init__(self, signum: int, lines: list[str]) -> None:
        super().__init__(*lines)
        self.signum, self.lines = signum, list(lines)

    @property
    def code(self) -> int:
        return 128 + self.signum


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal ``exc`` stands for: SIGINT for Ctrl-C (``KeyboardInterrupt``, ``SystemExit(130)``),
    SIGTERM for ``SystemExit(143)`` (:func:`sigterm_exits`); None for any other exception."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return int(exc.code) - 128
    return None


def resume_point(run_dir: Path) -> str:
    """Where the next run of the stage in ``run_dir`` resumes: the step (and call) of its checkpoint."""
    checkpoint, info = run_dir / CHECKPOINT, run_dir / CHECKPOINT_INFO
    try:
        saved = json.loads(info.read_text()) if checkpoint.is_file() else None
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or "step" not in saved:
        return "starts again (no checkpoint yet)"
    call = int(saved.get("call", 1))
    of_call = f" of training call {call}" if call > 1 else ""
    return f"resumes from step {int(saved['step'])}{of_call}"


def interrupted_line(kind: str, run_id: str, label: str, run_dir: Path, done: bool = False) -> str:
    """``interrupted; <kind> <run id> (<label>) resumes from step N`` (or ``had finished``)."""
    where = "had finished" if done else resume_point(run_dir)
    return f"interrupted; {kind} {run_id} ({label}) {where}"


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """``kill`` (SIGTERM) unwinds like Ctrl-C, as ``SystemExit(143)``: locks are released, the stage keeps
    its checkpoint.

    Only in the main thread (signal handlers can be set nowhere else); the previous handler comes back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore further SIGINT and SIGTERM while an interrupted run cleans up (a second Ctrl-C must not cut
    short the release of a lock); the previous handlers come back afterwards. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT for a moment (main thread only): a process started meanwhile inherits the ignoring
    (SIG_IGN survives ``exec``, and Python keeps it) and never sees Ctrl-C, which its parent forwards.

    A Ctrl-C inside the block is lost; keep it to the few milliseconds of a process start.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def exits_on_interrupt(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command-line ``main``: SIGTERM unwinds like Ctrl-C; either prints one line per interrupted
    stage (or that no stage was running) on stderr and returns 130 / 143, without a traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            with sigterm_exits():
                return main(*args, **kwargs)
        except (Interrupted, KeyboardInterrupt, SystemExit) as exc:
            signum = interrupt_signal(exc)
            if signum is None:
                raise  # sys.exit(n) of a command, argparse's exit
            with interrupts_ignored():
                lines = exc.lines if isinstance(exc, Interrupted) and exc.lines else [NOTHING_RUNNING]
                for line in lines:
                    print(line, file=sys.stderr, flush=True)
            return 128 + signum

    return wrapper
