"""The claim loop every worker runs, in any number of processes, hosts or Slurm tasks at once.

Pick a stage that is not done, whose dense stages are done (for a cell) and that no live worker holds; claim
its lock (mtlprune.execution.locks); run it (mtlprune.engine.runner.run_stage resumes from the stage's
checkpoint and records a failure instead of raising); release; repeat. When only stages held by others
remain, wait until they finish or their lock goes stale. So a killed run, a lost node or a second
``mtlprune run`` on the same store never repeats finished work, and an interrupted stage resumes where its
checkpoint left it.

Failed stages are left alone unless ``retry_failed``: then each stage that had failed *before this run
started* is run once more. A cell whose dense stage failed for good is marked ``blocked`` rather than
waited for. ``<store>/events.jsonl`` gets one line per claim, finish, takeover and crash (who, when).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtlprune.engine.runner import StageOutcome, run_stage
from mtlprune.execution.events import log_event
from mtlprune.execution.heap import keep_freed_memory
from mtlprune.execution.interrupts import Interrupted, interrupt_signal, interrupted_line, interrupts_ignored
from mtlprune.execution.locks import (
    HEARTBEAT_S,
    LOCK,
    STALE_AFTER_S,
    LockInfo,
    StageLock,
    read_lock,
    stale_reason,
)
from mtlprune.execution.progress import Reporter
from mtlprune.plan.stages import Stage
from mtlprune.spec import RuntimeSpec
from mtlprune.store import Store

POLL_S = 1.0


@dataclass(frozen=True)
class LockOptions:
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    job: str | None = None  # a Slurm task takes over its own earlier incarnation's lock at once


class Board:
    """One worker's view of the stage graph: what is done, what may run now, what must wait."""

    def __init__(self, stages: list[Stage], store: Store, retry_failed: bool, started_at: float) -> None:
        self.stages, self.store = stages, store
        self.retry_failed, self.started_at = retry_failed, started_at
        self.attempted: set[str] = set()  # run by this worker (or given up): never again in this call
        self._done: set[str] = set()
        self._requires = {s.run_id: s.requires for s in stages}

    def is_done(self, run_id: str) -> bool:
        if run_id not in self._done and self.store.is_done(run_id):
            self._done.add(run_id)
        return run_id in self._done

    def settled_failed(self, run_id: str) -> bool:
        """Failed, and not to be run again by this call (no retry, or it already failed after we began)."""
        if self.is_done(run_id):
            return False
        record = self.store.status_record(run_id)
        if record is None or record.status != "failed":
            return False
        requires = self._requires.get(run_id)
        if record.kind == "blocked" and requires and all(self.is_done(r) for r in requires):
            return run_id in self.attempted  # what blocked it is gone: it runs (once)
        if run_id in self.attempted or not self.retry_failed:
            return True
        return float(record.finished or 0.0) >= self.started_at

    def state(self, stage: Stage) -> str:
        """``done``, ``settled`` (failed for good, or attempted), ``wait`` (dense not done yet), ``ready``."""
        if self.is_done(stage.run_id):
            return "done"
        if stage.run_id in self.attempted or self.settled_failed(stage.run_id):
            return "settled"
        if any(not self.is_done(r) and not self.settled_failed(r) for r in stage.requires):
            return "wait"
        return "ready"  # a cell whose dense stage failed for good is run, and run_stage marks it blocked


def claim_loop(
    stages: list[Stage],
    store: Store,
    runtime: RuntimeSpec,
    *,
    retry_failed: bool = False,
    started_at: float | None = None,
    reporter: Reporter | None = None,
    poll_s: float = POLL_S,
    locks: LockOptions | None = None,
    give_up: Callable[[Stage, LockInfo | None], bool] | None = None,
) -> dict[str, StageOutcome]:
    """Run every stage of ``stages`` that this worker can claim until none is left; returns what it ran.

    A stage held by a live worker is waited for, unless ``give_up(stage, holder)`` says to leave it.
    """
    if runtime.keep_freed_memory:
        keep_freed_memory()  # for the rest of this process: every executor's stages run in this loop
    board = Board(stages, store, retry_failed, time.time() if started_at is None else started_at)
    reporter = reporter or Reporter()
    locks = locks or LockOptions()
    ran: dict[str, StageOutcome] = {}
    while True:
        waiting = False
        for stage in stages:
            state = board.state(stage)
            if state == "wait":
                waiting = True
            if state != "ready":
                continue
            lock = _claim(stage, store, locks, reporter)
            if lock is None:
                if give_up is not None and give_up(stage, read_lock(store.run_dir(stage.run_id) / LOCK)):
                    board.attempted.add(stage.run_id)
                else:
                    waiting = True
                continue
            outcome = _run_claimed(stage, lock, store, runtime, reporter)
            board.attempted.add(stage.run_id)
            if outcome is not None:
                ran[stage.run_id] = outcome
            break  # rescan from the top: dense stages first, and what just finished may free cells
        else:
            if not waiting:
                return ran
            time.sleep(poll_s)


def _claim(stage: Stage, store: Store, locks: LockOptions, reporter: Reporter) -> StageLock | None:
    run_id = stage.run_id

    def on_takeover(previous: LockInfo, reason: str) -> None:
        log_event(store, "takeover", run_id, previous=f"{previous.host}:{previous.pid}", reason=reason)
        reporter.note(f"took over stale lock of {run_id} from {previous.host}:{previous.pid} ({reason})")

    def on_lost(_: StageLock) -> None:
        log_event(store, "lost", run_id)
        reporter.note(f"WARNING: lost the lock of {run_id} (heartbeat late); another worker may run it too")

    def own_earlier_job(held: LockInfo) -> str | None:
        return "an earlier run of this Slurm job" if locks.job and held.job == locks.job else None

    return StageLock.try_claim(
        store.run_dir(run_id),
        heartbeat_s=locks.heartbeat_s,
        stale_after_s=locks.stale_after_s,
        job=locks.job,
        also_stale=own_earlier_job,
        on_takeover=on_takeover,
        on_lost=on_lost,
    )


def _run_claimed(
    stage: Stage, lock: StageLock, store: Store, runtime: RuntimeSpec, reporter: Reporter
) -> StageOutcome | None:
    """Run a claimed stage and release it; None when it turned out done already (finished meanwhile).

    Ctrl-C or SIGTERM (``KeyboardInterrupt``, ``SystemExit(130/143)``) becomes :class:`Interrupted`, raised
    once the lock is released, with the line saying where the stage resumes (also in the ``interrupted``
    event, for a pool's parent); any other exception (a Slurm requeue's) goes up as it is.
    """
    run_id = stage.run_id
    line: str | None = None
    try:
        with lock:
            if store.is_done(run_id):
                return None
            log_event(
                store, "claim", run_id, stage=stage.kind, label=stage.label, job=lock.payload.get("job")
            )  # fmt: skip
            reporter.stage_started(run_id, stage.kind, stage.label, stage.total_steps)
            start = time.time()
            try:
                outcome = run_stage(stage, store, runtime, reporter.step)
            except BaseException as exc:  # Ctrl-C, SystemExit from a Slurm requeue: the checkpoint stays
                with interrupts_ignored():  # a second Ctrl-C must not cut the release of the lock short
                    line = _interrupted_line(stage, store)
                    log_event(
                        store, "interrupted", run_id, stage=stage.kind, label=stage.label,
                        error=type(exc).__name__, line=line,
                    )  # fmt: skip
                    lock.release()
                raise
            wall_s = time.time() - start
            log_event(
                store, "finish", run_id, stage=stage.kind, label=stage.label, status=outcome.status,
                kind=outcome.kind, error=outcome.error, wall_s=round(wall_s, 3),
            )  # fmt: skip
            reporter.stage_finished(run_id, stage.kind, stage.label, outcome.status, wall_s, outcome.error)
    except BaseException as exc:
        signum = interrupt_signal(exc)
        if signum is None or isinstance(exc, Interrupted):
            raise
        with interrupts_ignored():
            lock.release()  # when the signal came outside the stage (between its end and its events)
            raise Interrupted(signum, [line or _interrupted_line(stage, store)]) from None
    return outcome


def _interrupted_line(stage: Stage, store: Store) -> str:
    run_dir = store.run_dir(stage.run_id)
    return interrupted_line(stage.kind, stage.run_id, stage.label, run_dir, done=store.is_done(stage.run_id))


def run_one(
    run_id: str,
    stages: list[Stage],
    store: Store,
    runtime: RuntimeSpec,
    *,
    retry_failed: bool = False,
    started_at: float | None = None,
    reporter: Reporter | None = None,
    poll_s: float = POLL_S,
    locks: LockOptions | None = None,
) -> str:
    """Bring one stage to an end (what a Slurm array task does); returns its store status afterwards.

    Its dense stages are run first when nobody holds them, waited for when somebody does. The stage itself is
    left to whoever holds it, except an earlier incarnation of this same job (a requeue), whose lock is
    taken over: the stage then resumes from its checkpoint.
    """
    by_id = {s.run_id: s for s in stages}
    if run_id not in by_id:
        raise KeyError(f"stage {run_id} is not in this matrix's plan")
    target = by_id[run_id]
    chain = [*(by_id[r] for r in target.requires), target]
    locks = locks or LockOptions()

    def give_up(stage: Stage, held: LockInfo | None) -> bool:
        return stage is target and held is not None and not (locks.job and held.job == locks.job)

    claim_loop(
        chain, store, runtime, retry_failed=retry_failed, started_at=started_at, reporter=reporter,
        poll_s=poll_s, locks=locks, give_up=give_up,
    )  # fmt: skip
    return store.status(run_id)


def lock_summary(run_dir: Path, now: float | None = None) -> tuple[LockInfo, str | None] | None:
    """The lock of a stage and why it is stale (None when live), or None when unlocked (`mtlprune status`)."""
    info = read_lock(Path(run_dir) / LOCK)
    if info is None:
        return None
    return info, stale_reason(info, time.time() if now is None else now)
