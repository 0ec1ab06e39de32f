"""Stage locks: at most one worker runs a stage, across processes, hosts and Slurm jobs.

A worker claims a stage by creating ``<run_dir>/lock`` exclusively (``O_CREAT|O_EXCL``) and keeps the claim
alive with a heartbeat thread that rewrites the file in place (through its own descriptor, so a heartbeat
can never land in somebody else's lock). A lock is *stale* when its heartbeat is older than
``stale_after_s`` (the holder's node died or froze) or when its holder ran on this host and that process is
gone (a killed run). A stale lock is taken over under a short-lived takeover mutex (``lock.takeover``, itself
created exclusively): its holder checks that the file at ``lock`` is still the stale one it judged, renames
it to a unique name, removes it and creates its own lock exclusively. Renaming alone is not enough: with
several claimants, a slow one would move aside the fresh lock of the winner (a test races 8 threads on it).
Release removes the lock under the same mutex, and only when the file there is still ours.

Limits (documented in docs/slurm.md): hosts are told apart by hostname; heartbeats of different hosts are
compared with this host's clock, so ``stale_after_s`` must exceed their clock skew; a holder frozen for longer
than ``stale_after_s`` loses its lock (its next heartbeat notices, see ``StageLock.lost``); a process that
dies inside the millisecond a takeover takes leaves a mutex that others clear after ``MUTEX_STALE_S``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK = "lock"
MUTEX = "lock.takeover"
MUTEX_STALE_S = 60.0
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
LOCK_BYTES = 1024  # the JSON is padded to this size so a heartbeat rewrites it in place with one write
HOST = socket.gethostname()

Clock = Callable[[], float]


class LockHeld(RuntimeError):
    """``StageLock.claim`` found the stage claimed by a live holder."""


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says, plus the identity of the file it was read from."""

    host: str
    pid: int
    claimed_at: float
    heartbeat: float
    token: str
    job: str | None
    inode: tuple[int, int]  # (st_dev, st_ino) of the file read

    def age(self, now: float) -> float:
        """Seconds since the last heartbeat."""
        return now - self.heartbeat

    def describe(self, now: float) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"{self.host}:{self.pid}{job}, claimed {now - self.claimed_at:.0f} s ago"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def read_lock(path: Path) -> LockInfo | None:
    """The lock at ``path``, or None when there is none.

    A lock whose JSON cannot be read yet (just created, not written) counts as fresh: its file time is its
    heartbeat and its holder is unknown, so only age can make it stale.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    inode = (st.st_dev, st.st_ino)
    try:
        data = json.loads(raw.decode("utf-8").strip() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        return LockInfo("?", 0, st.st_mtime, st.st_mtime, "", None, inode)
    return LockInfo(
        host=str(data.get("host", "?")),
        pid=int(data.get("pid", 0)),
        claimed_at=float(data.get("claimed_at", st.st_mtime)),
        heartbeat=float(data.get("heartbeat", st.st_mtime)),
        token=str(data.get("token", "")),
        job=data.get("job"),
        inode=inode,
    )


def stale_reason(info: LockInfo, now: float, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why ``info`` is stale (heartbeat too old, or holder gone from this host), or None when it is live."""
    age = info.age(now)
    if age > stale_after_s:
        return f"heartbeat {age:.0f} s old (limit {stale_after_s:.0f} s)"
    if info.host == HOST and info.pid and not pid_alive(info.pid):
        return f"process {info.pid} on {info.host} is gone"
    return None


def current_job() -> str | None:
    """The Slurm job of this process (``<array job>_<task>`` inside an array), or None outside Slurm."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class StageLock:
    """A held stage lock; use ``try_claim``/``claim``, then ``release`` (or ``with``)."""

    def __init__(
        self,
        path: Path,
        fd: int,
        payload: dict[str, Any],
        heartbeat_s: float,
        clock: Clock,
        on_lost: Callable[[StageLock], None] | None,
    ) -> None:
        self.path, self._fd, self.payload = path, fd, payload
        self.heartbeat_s, self.clock, self.on_lost = heartbeat_s, clock, on_lost
        st = os.fstat(fd)
        self.inode = (st.st_dev, st.st_ino)
        self.lost = False
        self._released = False
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._write()
        self._thread: threading.Thread | None = None
        if heartbeat_s > 0:
            self._thread = threading.Thread(target=self._beat_forever, name=f"heartbeat {path}", daemon=True)
            self._thread.start()

    # -- claiming ---------------------------------------------------------------------------------------
    @classmethod
    def try_claim(
        cls,
        run_dir: str | Path,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        clock: Clock = time.time,
        job: str | None = None,
        also_stale: Callable[[LockInfo], str | None] | None = None,
        on_takeover: Callable[[LockInfo, str], None] | None = None,
        on_lost: Callable[[StageLock], None] | None = None,
    ) -> StageLock | None:
        """Claim the stage of ``run_dir``; None when a live holder has it (or another claimant won a race).

        ``also_stale`` may declare more locks stale (a requeued Slurm task takes over its own earlier
        incarnation's lock at once); ``on_takeover(previous, reason)`` is told about each takeover.
        """
        path = Path(run_dir) / LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            fd = _create_exclusive(path)
            if fd is None and attempt == 0:
                held = read_lock(path)
                if held is None:
                    continue  # released between our create and our read: try the create once more
                reason = _stale(held, clock(), stale_after_s, also_stale)
                if reason is None:
                    return None
                fd = _take_over(path, held, clock, stale_after_s, also_stale)
                if fd is not None and on_takeover is not None:
                    on_takeover(held, reason)
            if fd is None:
                return None
            now = clock()
            payload = {
                "host": HOST,
                "pid": os.getpid(),
                "claimed_at": now,
                "heartbeat": now,
                "token": uuid.uuid4().hex,
                "job": job if job is not None else current_job(),
            }
            return cls(path, fd, payload, heartbeat_s, clock, on_lost)
        return None

    @classmethod
    def claim(cls, run_dir: str | Path, **kwargs: Any) -> StageLock:
        """Like ``try_claim`` but raises ``LockHeld`` (naming the holder) when the stage is taken."""
        lock = cls.try_claim(run_dir, **kwargs)
        if lock is None:
            held = read_lock(Path(run_dir) / LOCK)
            who = held.describe(time.time()) if held else "another claimant (race lost)"
            raise LockHeld(f"{Path(run_dir) / LOCK} is held by {who}")
        return lock

    # -- holding ----------------------------------------------------------------------------------------
    def beat(self) -> bool:
        """Refresh the heartbeat once; False (``lost`` set) when the file at ``path`` is no longer ours."""
        with self._guard:
            if self._released or self.lost:
                return not self.lost
            if _inode_at(self.path) != self.inode:
                self.lost = True
            else:
                self.payload["heartbeat"] = self.clock()
                self._write()
        if self.lost and self.on_lost is not None:
            self.on_lost(self)
        return not self.lost

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.beat():
                return

    def _write(self) -> None:
        text = json.dumps(self.payload, sort_keys=True)
        data = text.ljust(LOCK_BYTES - 1).encode() + b"\n"  # longer JSON still works, just not padded
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, but only if it is still ours."""
        with self._guard:
            if self._released:
                return
            self._released = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            if not self.lost:
                mutex = _acquire_mutex(self.path, wait_s=5.0)  # no takeover may move the file meanwhile
                try:
                    if _inode_at(self.path) == self.inode:
                        os.unlink(self.path)
                    else:
                        self.lost = True  # taken over while we were not looking: leave theirs alone
                finally:
                    _release_mutex(mutex)
        finally:
            os.close(self._fd)

    def __enter__(self) -> StageLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create_exclusive(path: Path) -> int | None:
    try:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        return None


def _inode_at(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _stale(
    info: LockInfo, now: float, stale_after_s: float, also: Callable[[LockInfo], str | None] | None
) -> str | None:
    return stale_reason(info, now, stale_after_s) or (also(info) if also is not None else None)


def _take_over(
    path: Path,
    judged: LockInfo,
    clock: Clock,
    stale_after_s: float,
    also_stale: Callable[[LockInfo], str | None] | None,
) -> int | None:
    """Replace the stale lock ``judged`` by a new one of ours; its descriptor, or None when we lost."""
    mutex = _acquire_mutex(path)
    if mutex is None:
        return None  # somebody else is taking it over right now
    try:
        current = read_lock(path)
        if current is not None:
            if current.inode != judged.inode or _stale(current, clock(), stale_after_s, also_stale) is None:
                return None  # replaced or refreshed since we judged it
            aside = path.with_name(f"{LOCK}.stale.{uuid.uuid4().hex}")
            os.rename(path, aside)
            os.unlink(aside)
        return _create_exclusive(path)
    finally:
        _release_mutex(mutex)


def _acquire_mutex(path: Path, wait_s: float = 0.0) -> Path | None:
    """Create ``lock.takeover`` beside ``path`` exclusively (clearing one abandoned for MUTEX_STALE_S)."""
    mutex = path.with_name(MUTEX)
    deadline = time.monotonic() + wait_s
    while True:
        fd = _create_exclusive(mutex)
        if fd is not None:
            os.close(fd)
            return mutex
        _clear_abandoned_mutex(mutex)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _clear_abandoned_mutex(mutex: Path) -> None:
    try:
        age = time.time() - os.stat(mutex).st_mtime
    except FileNotFoundError:
        return
    if age > MUTEX_STALE_S:
        aside = mutex.with_name(f"{MUTEX}.abandoned.{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(mutex, aside)
            if time.time() - os.stat(aside).st_mtime <= MUTEX_STALE_S:  # a fresh one: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, mutex)
            os.unlink(aside)


def _release_mutex(mutex: Path | None) -> None:
    if mutex is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mutex)
