"""Run a matrix to completion from any number of processes, hosts or Slurm tasks at once.

Every worker runs the same claim loop over the stage graph: pick a stage that is not done, whose dense stage
is done (for a cell) and that no live worker holds; claim its lock (mtlprune.locks); run it
(mtlprune.runner.run_stage resumes from the stage's checkpoint and records a failure instead of raising);
release; repeat. When only stages held by others remain, wait until they finish or their lock goes stale.
So a killed run, a lost node or a second ``mtlprune run`` on the same store never repeats finished work,
and an interrupted stage resumes where its checkpoint left it.

Failed stages are left alone unless ``retry_failed``: then each stage that had failed *before this run
started* is run once more. A cell whose dense stage failed for good is marked ``blocked`` rather than
waited for. ``<store>/events.jsonl`` gets one line per claim, finish, takeover and crash (who, when).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlprune import registry
from mtlprune.code_changes import check_changed_code
from mtlprune.events import EventTail, log_event
from mtlprune.fingerprint import resolve_data
from mtlprune.locks import (
    HEARTBEAT_S,
    LOCK,
    STALE_AFTER_S,
    LockInfo,
    StageLock,
    read_lock,
    stale_reason,
)
from mtlprune.progress import KINDS, EtaModel, Reporter, make_reporter
from mtlprune.runner import StageOutcome, plan, record_failure, run_stage
from mtlprune.spec import DenseSpec, MatrixSpec, RunSpec, RuntimeSpec
from mtlprune.spec.select import Selection
from mtlprune.store import Store

POLL_S = 1.0


@dataclass
class MatrixOutcome:
    done: list[str]  # stages finished during this call (by any worker)
    failed: dict[str, str]  # stages without a result at the end: run_id -> error
    skipped: list[str]  # stages already done when the call began


@dataclass(frozen=True)
class Stage:
    """One node of the stage graph: a dense stage, or a cell that ``needs`` its dense stage."""

    spec: DenseSpec | RunSpec
    kind: str  # dense | cell
    label: str
    needs: str | None = None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def total_steps(self) -> int | None:
        return self.spec.train.steps if isinstance(self.spec, DenseSpec) else None


def stages_of(matrix: MatrixSpec, only: Selection | None = None) -> list[Stage]:
    """Dense stages first, then cells, each in plan order (the ``only`` selection of them)."""
    the_plan = plan(matrix, only)
    stages = [
        Stage(d, "dense", f"{d.data.dataset} {d.arch.name} seed {d.seed}") for d in the_plan.dense
    ]  # fmt: skip
    stages += [
        Stage(c, "cell", f"{c.method.label}@{c.target_sparsity:g} seed {c.seed}", c.dense().run_id)
        for c in the_plan.cells
    ]
    return stages


# ------------------------------------------------------------------------------------------ claim loop


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
        self._needs = {s.run_id: s.needs for s in stages}

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
        needs = self._needs.get(run_id)
        if record.kind == "blocked" and needs is not None and self.is_done(needs):
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
        if stage.needs is not None and not self.is_done(stage.needs) and not self.settled_failed(stage.needs):
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
    """Run a claimed stage and release it; None when it turned out done already (finished meanwhile)."""
    run_id = stage.run_id
    with lock:
        if store.is_done(run_id):
            return None
        log_event(store, "claim", run_id, stage=stage.kind, label=stage.label, job=lock.payload.get("job"))
        reporter.stage_started(run_id, stage.kind, stage.label, stage.total_steps)
        start = time.time()
        try:
            outcome = run_stage(stage.spec, store, runtime, reporter.step)
        except BaseException as exc:  # Ctrl-C, SystemExit from a Slurm requeue: the checkpoint stays
            log_event(store, "interrupted", run_id, stage=stage.kind, error=type(exc).__name__)
            raise
        wall_s = time.time() - start
        log_event(
            store, "finish", run_id, stage=stage.kind, label=stage.label, status=outcome.status,
            kind=outcome.kind, error=outcome.error, wall_s=round(wall_s, 3),
        )  # fmt: skip
        reporter.stage_finished(run_id, stage.kind, stage.label, outcome.status, wall_s, outcome.error)
    return outcome


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

    Its dense stage is run first when nobody holds it, waited for when somebody does. The stage itself is
    left to whoever holds it, except an earlier incarnation of this same job (a requeue), whose lock is
    taken over: the stage then resumes from its checkpoint.
    """
    by_id = {s.run_id: s for s in stages}
    if run_id not in by_id:
        raise KeyError(f"stage {run_id} is not in this matrix's plan")
    target = by_id[run_id]
    chain = [by_id[target.needs], target] if target.needs else [target]
    locks = locks or LockOptions()

    def give_up(stage: Stage, held: LockInfo | None) -> bool:
        return stage is target and held is not None and not (locks.job and held.job == locks.job)

    claim_loop(
        chain, store, runtime, retry_failed=retry_failed, started_at=started_at, reporter=reporter,
        poll_s=poll_s, locks=locks, give_up=give_up,
    )  # fmt: skip
    return store.status(run_id)


# ------------------------------------------------------------------------------------------ run_matrix


def loaded_plugins() -> list[str]:
    """Plugin modules imported in this process beyond the built-ins: worker processes import them too."""
    builtin = {*registry.BUILTIN_PLUGIN_PACKAGES, "<entry-points>"}
    return sorted(m for m in getattr(registry, "_loaded", set()) if m not in builtin)


def matrix_outcome(stages: list[Stage], store: Store, already_done: set[str]) -> MatrixOutcome:
    """The store's verdict on ``stages``: finished now, failed (with the error), done before."""
    outcome = MatrixOutcome(done=[], failed={}, skipped=[])
    for stage in stages:
        run_id = stage.run_id
        if run_id in already_done:
            outcome.skipped.append(run_id)
        elif store.is_done(run_id):
            outcome.done.append(run_id)
        else:
            record = store.status_record(run_id)
            why = record.error if record is not None else None
            outcome.failed[run_id] = why or f"not finished (status {store.status(run_id)})"
    return outcome


def measured_times(stages: list[Stage], store: Store, done: set[str]) -> dict[str, list[float]]:
    """wall_s of the finished stages, by kind (what the ETA is made of)."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for stage in stages:
        if stage.run_id in done:
            with contextlib.suppress(OSError, ValueError):
                times[stage.kind].append(store.result(stage.run_id).wall_s)
    return times


def run_matrix(
    matrix: MatrixSpec,
    store: Store,
    show_progress: bool = True,
    workers: int | None = None,
    retry_failed: bool = False,
    *,
    plugins: list[str] | None = None,
    poll_s: float = POLL_S,
    reporter: Reporter | None = None,
    recompute_changed: bool = False,
    only: Selection | None = None,
) -> MatrixOutcome:
    """Run every pending stage of ``matrix`` into ``store``; failures are recorded, never fatal.

    ``workers`` (default ``runtime.workers``) > 1 runs a local pool of that many processes (multiprocessing
    "spawn"), each running one stage at a time (a CPU stage always on one thread: mtlprune.determinism) and,
    where several GPUs are visible, on its own GPU. Other ``mtlprune run`` processes may work on the same
    store at the same time. ``plugins``: modules the pool's workers import (default: those loaded here).
    Finished cells of a plugin method whose code changed since are refused (:class:`CodeChanged`) unless
    ``recompute_changed`` sets them aside to be computed again. ``only`` runs the selected stages alone.
    """
    workers = matrix.runtime.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started_at = time.time()
    if any(d.source == "disk" and d.fingerprint is None for d in matrix.datasets):
        matrix = resolve_data(matrix, store.root)  # disk data: run ids follow its content
    stages = stages_of(matrix, only)
    check_changed_code(stages, store, recompute_changed)
    already_done = {s.run_id for s in stages if store.is_done(s.run_id)}
    board = Board(stages, store, retry_failed, started_at)
    runnable = [s for s in stages if board.state(s) not in ("done", "settled")]
    if runnable:  # nothing to run (all done, or failed without --retry-failed): no worker, no model
        reporter = reporter or make_reporter(show_progress)
        remaining = {kind: sum(s.kind == kind for s in runnable) for kind in KINDS}
        eta = EtaModel(remaining, measured_times(stages, store, already_done), parallel=workers)
        settled = len(stages) - len(runnable) - len(already_done)  # failed before, not retried
        reporter.start(len(stages), len(already_done), eta, already_failed=settled)
        try:
            with sigterm_exits():
                if workers == 1:
                    _run_here(matrix, stages, store, retry_failed, started_at, reporter, poll_s)
                else:
                    plugins = loaded_plugins() if plugins is None else plugins
                    _run_pool(matrix, store, workers, retry_failed, started_at, plugins, reporter, poll_s)
        finally:
            reporter.close()
    return matrix_outcome(stages, store, already_done)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """``kill`` (SIGTERM) unwinds like Ctrl-C: locks are released, the stage keeps its checkpoint.

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
        signal.signal(signal.SIGTERM, previous)


def _run_here(
    matrix: MatrixSpec,
    stages: list[Stage],
    store: Store,
    retry_failed: bool,
    started_at: float,
    reporter: Reporter,
    poll_s: float,
) -> None:
    import torch

    threads = torch.get_num_threads()
    if matrix.runtime.num_threads:
        torch.set_num_threads(matrix.runtime.num_threads)
    try:
        claim_loop(
            stages, store, matrix.runtime, retry_failed=retry_failed, started_at=started_at,
            reporter=reporter, poll_s=poll_s,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ local pool


class WorkerCrashed(RuntimeError):
    """A pool worker process died while running a stage (segfault, out-of-memory killer, ...)."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus(device: str) -> list[str]:
    """The GPUs this process may hand out (CUDA_VISIBLE_DEVICES, else all); none for a CPU run."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(index: int, gpus: list[str]) -> dict[str, str]:
    """One GPU per worker, round-robin, where several are visible (one GPU is shared as is)."""
    return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if len(gpus) > 1 else {}


def _pool_worker(
    payload: dict[str, Any],
    store_root: str,
    plugins: list[str],
    retry_failed: bool,
    started_at: float,
    threads: int,
    env: dict[str, str],
    poll_s: float,
) -> None:
    """A pool process: the same claim loop as any other worker, silent (the parent reports)."""
    os.environ.update(env)  # before anything touches CUDA in this fresh (spawned) interpreter
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind: release locks
    try:
        import torch

        registry.load_plugins(plugins)
        matrix = MatrixSpec.model_validate(payload)
        torch.set_num_threads(threads)
        claim_loop(
            stages_of(matrix), Store(store_root), matrix.runtime, retry_failed=retry_failed,
            started_at=started_at, poll_s=poll_s,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run_pool(
    matrix: MatrixSpec,
    store: Store,
    workers: int,
    retry_failed: bool,
    started_at: float,
    plugins: list[str],
    reporter: Reporter,
    poll_s: float,
) -> None:
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    gpus = visible_gpus(matrix.runtime.device)
    threads = matrix.runtime.num_threads or max(1, cpu_count() // workers)
    payload = matrix.model_dump(mode="json")
    tail = EventTail(store)
    tail.read()  # only this call's events are reported
    running: dict[int, str] = {}  # worker pid -> run_id it claimed

    def start(index: int) -> Any:
        process = ctx.Process(
            target=_pool_worker,
            args=(payload, str(store.root), plugins, retry_failed, started_at, threads,
                  worker_env(index, gpus), poll_s),
            name=f"bench-worker-{index}",
        )  # fmt: skip
        process.start()
        return process

    ours = {s.run_id for s in stages_of(matrix)}

    def report_events() -> None:
        for event in tail.read():
            kind, run_id = event.get("stage", "cell"), event["run_id"]
            if run_id not in ours:
                continue  # another matrix sharing the store
            if event["event"] == "claim":
                running[event["pid"]] = run_id
                reporter.stage_started(run_id, kind, event.get("label", ""))
            elif event["event"] == "finish":
                running.pop(event["pid"], None)
                reporter.stage_finished(
                    run_id, kind, event.get("label", ""), event.get("status", "failed"),
                    event.get("wall_s"), event.get("error"),
                )  # fmt: skip

    procs = {index: start(index) for index in range(workers)}
    respawns = 0
    try:
        while procs:
            wait([p.sentinel for p in procs.values()], timeout=poll_s)
            report_events()
            for index, process in list(procs.items()):
                if process.exitcode is None:
                    continue
                process.join()
                del procs[index]
                if process.exitcode == 0:
                    continue
                report_events()
                crashed = running.pop(process.pid, None)
                if crashed is not None:
                    _fail_crashed(store, crashed, process.pid, process.exitcode)
                reporter.note(f"worker {index} (pid {process.pid}) exited with code {process.exitcode}")
                if respawns < workers:
                    respawns += 1
                    procs[index] = start(index)
        report_events()
    except BaseException:
        for process in procs.values():
            process.terminate()
        for process in procs.values():
            process.join(timeout=10)
        raise


def _fail_crashed(store: Store, run_id: str, pid: int, exitcode: int) -> None:
    """Record a crashed worker's stage as failed, unless another worker has already taken it over."""
    lock = StageLock.try_claim(store.run_dir(run_id), heartbeat_s=0)
    if lock is None:
        return
    with lock:
        if store.is_done(run_id):
            return
        signal_note = (
            " (killed by a signal; SIGKILL is often the out-of-memory killer)" if exitcode < 0 else ""
        )
        error = WorkerCrashed(f"worker process {pid} died with exit code {exitcode}{signal_note}")
        record = record_failure(store, run_id, error, kind="error")
        log_event(store, "finish", run_id, status="failed", kind="error", error=record.error)


def lock_summary(run_dir: Path, now: float | None = None) -> tuple[LockInfo, str | None] | None:
    """The lock of a stage and why it is stale (None when live), or None when unlocked (`mtlprune status`)."""
    info = read_lock(Path(run_dir) / LOCK)
    if info is None:
        return None
    return info, stale_reason(info, time.time() if now is None else now)
