"""The local pool: worker processes (multiprocessing "spawn") on this machine, each running the claim loop
(mtlprune.execution.claim) one stage at a time, on its own GPU where several are visible. The parent reports
their progress from the events log and records the stage of a worker that crashed as failed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from typing import Any

from mtlprune import registry
from mtlprune.engine.failures import record_failure
from mtlprune.execution.claim import claim_loop
from mtlprune.execution.events import EventTail, log_event
from mtlprune.execution.interrupts import (
    Interrupted,
    interrupt_signal,
    interrupted_line,
    interrupts_ignored,
    sigint_ignored,
)
from mtlprune.execution.locks import StageLock
from mtlprune.execution.progress import Reporter
from mtlprune.plan.stages import Stage, plan
from mtlprune.spec import MatrixSpec
from mtlprune.store import Store

STOP_WAIT_S = 30.0  # how long interrupted workers get to unwind before they are killed
INTERRUPTED_EXIT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a worker that unwound cleanly


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
    run_ids: list[str],
    store_root: str,
    plugins: list[str],
    retry_failed: bool,
    started_at: float,
    threads: int,
    env: dict[str, str],
    poll_s: float,
) -> None:
    """A pool process: the same claim loop as any other worker, silent (the parent reports).

    It never sees Ctrl-C (it ignores SIGINT from its start: :func:`run_pool`); SIGTERM, which the parent
    sends on Ctrl-C or SIGTERM, unwinds it (the stage keeps its checkpoint and logs where it resumes, the
    lock is released) and it exits with 143, without a word.
    """
    os.environ.update(env)  # before anything touches CUDA in this fresh (spawned) interpreter
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind: release locks
    try:
        import torch

        registry.load_plugins(plugins)
        matrix = MatrixSpec.model_validate(payload)
        torch.set_num_threads(threads)
        claim_loop(
            _stages(matrix, run_ids), Store(store_root), matrix.runtime, retry_failed=retry_failed,
            started_at=started_at, poll_s=poll_s,
        )  # fmt: skip
    except (Interrupted, KeyboardInterrupt, SystemExit) as exc:
        signum = interrupt_signal(exc)
        if signum is None:
            raise
        raise SystemExit(128 + signum) from None  # an exit code, no traceback: the parent says what stopped
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving anyway: no SystemExit inside atexit hooks


def _stages(matrix: MatrixSpec, run_ids: list[str]) -> list[Stage]:
    """The stages of ``matrix`` to run (a ``--only`` selection travels as their run ids), in plan order."""
    wanted = set(run_ids)
    return [stage for stage in plan(matrix) if stage.run_id in wanted]


def run_pool(
    matrix: MatrixSpec,
    run_ids: list[str],
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

    pids: set[int] = set()  # every worker this pool started

    def start(index: int) -> Any:
        process = ctx.Process(
            target=_pool_worker,
            args=(payload, run_ids, str(store.root), plugins, retry_failed, started_at, threads,
                  worker_env(index, gpus), poll_s),
            name=f"bench-worker-{index}",
        )  # fmt: skip
        with sigint_ignored():  # inherited: Ctrl-C reaches the parent alone, which forwards it as SIGTERM
            process.start()
        pids.add(process.pid)
        return process

    ours = set(run_ids)
    labels: dict[str, tuple[str, str]] = {}  # run_id -> (kind, label), from the claims
    interrupted: dict[str, str] = {}  # run_id -> the line of its interruption, in order

    def report_events() -> None:
        for event in tail.read():
            kind, run_id = event.get("stage", "cell"), event["run_id"]
            if run_id not in ours:
                continue  # another matrix sharing the store
            if event["event"] == "claim":
                running[event["pid"]] = run_id
                labels[run_id] = (kind, event.get("label", ""))
                reporter.stage_started(run_id, kind, event.get("label", ""))
            elif event["event"] == "finish":
                running.pop(event["pid"], None)
                reporter.stage_finished(
                    run_id, kind, event.get("label", ""), event.get("status", "failed"),
                    event.get("wall_s"), event.get("error"),
                )  # fmt: skip
            elif event["event"] == "interrupted" and event.get("pid") in pids:
                running.pop(event["pid"], None)
                interrupted[run_id] = event.get("line") or f"interrupted; {kind} {run_id}"

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
                if crashed is not None and process.exitcode not in INTERRUPTED_EXIT_CODES:
                    _fail_crashed(store, crashed, process.pid, process.exitcode)
                reporter.note(f"worker {index} (pid {process.pid}) exited with code {process.exitcode}")
                if respawns < workers:
                    respawns += 1
                    procs[index] = start(index)
        report_events()
    except BaseException as exc:
        signum = interrupt_signal(exc)
        with interrupts_ignored():  # the workers release their locks; a second Ctrl-C must not cut that
            for process in procs.values():
                process.terminate()  # SIGTERM: each unwinds its stage and logs where it resumes
            for process in procs.values():
                process.join(timeout=STOP_WAIT_S)
            for process in procs.values():
                if process.exitcode is None:  # stuck inside one long operation: its lock goes stale
                    process.kill()
                    process.join()
            if signum is None:
                raise
            report_events()
            for run_id in running.values():  # killed before it could say so: its last checkpoint
                kind, label = labels.get(run_id, ("stage", ""))
                interrupted[run_id] = interrupted_line(kind, run_id, label, store.run_dir(run_id))
            raise Interrupted(signum, list(interrupted.values())) from None


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
