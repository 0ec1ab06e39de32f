"""Stage locks: exclusive claim, heartbeat, staleness (age, dead pid), takeover races, release-if-ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mtlprune.execution.locks import HOST, LOCK, LockHeld, StageLock, read_lock, stale_reason

ROOT = Path(__file__).resolve().parents[2]


def _write_lock(run_dir: Path, **fields) -> Path:
    """A lock file as another worker would have left it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "host": "elsewhere",
        "pid": 4242,
        "claimed_at": 0.0,
        "heartbeat": 0.0,
        "token": "x",
        "job": None,
    }
    payload.update(fields)
    path = run_dir / LOCK
    path.write_text(json.dumps(payload))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claim_is_exclusive_and_names_the_holder(tmp_path):
    lock = StageLock.try_claim(tmp_path, heartbeat_s=0)
    assert lock is not None
    info = read_lock(tmp_path / LOCK)
    assert (info.host, info.pid, info.token) == (HOST, os.getpid(), lock.payload["token"])
    assert info.claimed_at == info.heartbeat == pytest.approx(time.time(), abs=5)
    assert StageLock.try_claim(tmp_path, heartbeat_s=0) is None  # same process, second claim: refused
    with pytest.raises(LockHeld, match=rf"held by {HOST}:{os.getpid()}"):
        StageLock.claim(tmp_path, heartbeat_s=0)
    lock.release()
    assert not (tmp_path / LOCK).exists()
    with StageLock.claim(tmp_path, heartbeat_s=0) as again:  # free again after release
        assert (tmp_path / LOCK).exists() and again.payload["token"] != lock.payload["token"]
    assert not (tmp_path / LOCK).exists()


def test_lock_file_is_fixed_size_json_rewritten_in_place_by_the_heartbeat(tmp_path):
    now = [1000.0]
    lock = StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now[0])
    inode = os.stat(tmp_path / LOCK).st_ino
    assert read_lock(tmp_path / LOCK).heartbeat == 1000.0
    now[0] = 1030.5
    assert lock.beat() is True
    assert read_lock(tmp_path / LOCK).heartbeat == 1030.5 and read_lock(tmp_path / LOCK).claimed_at == 1000.0
    assert os.stat(tmp_path / LOCK).st_ino == inode and os.path.getsize(tmp_path / LOCK) == 1024
    lock.release()


def test_heartbeat_thread_keeps_the_lock_fresh(tmp_path):
    lock = StageLock.try_claim(tmp_path, heartbeat_s=0.05)
    first = read_lock(tmp_path / LOCK).heartbeat
    deadline = time.time() + 5
    while read_lock(tmp_path / LOCK).heartbeat == first and time.time() < deadline:
        time.sleep(0.02)
    assert read_lock(tmp_path / LOCK).heartbeat > first
    lock.release()
    assert not lock._thread.is_alive()


def test_stale_by_heartbeat_age_is_taken_over(tmp_path):
    now = 10_000.0
    _write_lock(tmp_path, heartbeat=now - 301)  # another host: only age can make it stale
    info = read_lock(tmp_path / LOCK)
    assert stale_reason(info, now, stale_after_s=300) == "heartbeat 301 s old (limit 300 s)"
    assert StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now - 2) is None  # 299 s: still live
    seen = []
    lock = StageLock.try_claim(
        tmp_path, heartbeat_s=0, clock=lambda: now, on_takeover=lambda i, r: seen.append(r)
    )
    assert lock is not None and seen == ["heartbeat 301 s old (limit 300 s)"]
    assert read_lock(tmp_path / LOCK).pid == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]  # the stale file is gone, nothing left over
    lock.release()


def test_stale_by_dead_pid_on_this_host_but_not_on_another(tmp_path):
    pid = _dead_pid()
    now = time.time()
    _write_lock(tmp_path / "here", host=HOST, pid=pid, heartbeat=now)
    _write_lock(tmp_path / "there", host="elsewhere", pid=pid, heartbeat=now)
    _write_lock(tmp_path / "alive", host=HOST, pid=os.getppid(), heartbeat=now)
    assert stale_reason(read_lock(tmp_path / "here" / LOCK), now) == f"process {pid} on {HOST} is gone"
    assert stale_reason(read_lock(tmp_path / "there" / LOCK), now) is None  # fresh heartbeat elsewhere: live
    assert stale_reason(read_lock(tmp_path / "alive" / LOCK), now) is None
    lock = StageLock.try_claim(tmp_path / "here", heartbeat_s=0)
    assert lock is not None
    lock.release()
    assert StageLock.try_claim(tmp_path / "there", heartbeat_s=0) is None


def test_unreadable_just_created_lock_counts_as_fresh(tmp_path):
    (tmp_path / LOCK).write_text("")  # created, not yet written by its claimant
    info = read_lock(tmp_path / LOCK)
    assert info.pid == 0 and stale_reason(info, time.time()) is None
    assert StageLock.try_claim(tmp_path, heartbeat_s=0) is None
    assert stale_reason(info, info.heartbeat + 301) is not None  # but it does age


def test_takeover_race_between_threads_has_exactly_one_winner(tmp_path):
    for round_ in range(15):
        run_dir = tmp_path / f"r{round_}"
        _write_lock(run_dir, heartbeat=time.time() - 1000)
        barrier = threading.Barrier(8)
        winners: list[StageLock] = []

        def claim(barrier=barrier, run_dir=run_dir, winners=winners) -> None:
            barrier.wait()
            lock = StageLock.try_claim(run_dir, heartbeat_s=0)
            if lock is not None:
                winners.append(lock)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1, round_
        assert read_lock(run_dir / LOCK).token == winners[0].payload["token"]
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]
        winners[0].release()


RACER = """
import sys, time
from mtlprune.execution.locks import StageLock
start = float(sys.argv[2])
while time.time() < start:
    pass
lock = StageLock.try_claim(sys.argv[1], heartbeat_s=0)
print("won" if lock is not None else "lost", flush=True)
time.sleep(1.0)  # hold it while the others try
"""


def test_takeover_race_between_processes_has_exactly_one_winner(tmp_path):
    _write_lock(tmp_path, heartbeat=time.time() - 1000)
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                         text=True, env=env)
        for _ in range(4)
    ]  # fmt: skip
    results = sorted(p.communicate(timeout=30)[0].strip() for p in racers)
    assert results == ["lost", "lost", "lost", "won"]


def test_release_removes_only_our_own_lock(tmp_path):
    now = [0.0]
    lost = []
    mine = StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now[0], on_lost=lost.append)
    now[0] = 1000.0  # our heartbeat is now 1000 s old: someone takes the lock over
    theirs = StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now[0])
    assert theirs is not None
    assert mine.beat() is False and mine.lost and lost == [mine]  # the heartbeat notices, and says so
    assert read_lock(tmp_path / LOCK).token == theirs.payload["token"]  # our beat did not overwrite theirs
    mine.release()
    assert read_lock(tmp_path / LOCK).token == theirs.payload["token"]  # still theirs
    theirs.release()
    assert not (tmp_path / LOCK).exists()


def test_release_without_noticing_the_takeover_puts_the_new_lock_back(tmp_path):
    now = [0.0]
    mine = StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now[0])
    now[0] = 1000.0
    theirs = StageLock.try_claim(tmp_path, heartbeat_s=0, clock=lambda: now[0])
    mine.release()  # no heartbeat in between: release itself must see the file is not ours
    assert mine.lost
    assert read_lock(tmp_path / LOCK).token == theirs.payload["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]
    theirs.release()
