"""`run_matrix`: run a matrix to completion here, in this process or a local pool of worker processes
(mtlprune.execution.local), every worker running the claim loop (mtlprune.execution.claim). Slurm runs
the same loop per task (mtlprune.execution.slurm)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mtlprune import registry
from mtlprune.engine.runner import restore_finished
from mtlprune.execution.claim import POLL_S, Board, claim_loop
from mtlprune.execution.interrupts import sigterm_exits
from mtlprune.execution.local import run_pool
from mtlprune.execution.progress import Reporter, make_reporter
from mtlprune.plan.code_changes import check_changed_code
from mtlprune.plan.estimate import EtaModel, measured_times
from mtlprune.plan.fingerprint import resolve_data
from mtlprune.plan.stages import Stage, plan
from mtlprune.spec import MatrixSpec
from mtlprune.spec.select import Selection
from mtlprune.store import Store


@dataclass
class MatrixOutcome:
    done: list[str]  # stages finished during this call (by any worker)
    failed: dict[str, str]  # stages without a result at the end: run_id -> error
    skipped: list[str]  # stages already done when the call began


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
    "spawn"), each running one stage at a time (a CPU stage always on one thread:
    mtlprune.engine.determinism) and, where several GPUs are visible, on its own GPU. Other ``mtlprune run``
    processes may work on the same store at the same time. ``plugins``: modules the pool's workers import
    (default: those loaded here). Finished cells of a plugin method whose code changed since are refused
    (:class:`CodeChanged`) unless ``recompute_changed`` sets them aside to be computed again. ``only`` runs
    the selected stages alone (in the pool too).

    Ctrl-C or SIGTERM raises :class:`~mtlprune.execution.interrupts.Interrupted` once every lock is released,
    with one line per interrupted stage saying where it resumes (``mtlprune run`` prints them and exits with
    130 or 143).
    """
    workers = matrix.runtime.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started_at = time.time()
    if any(d.source == "disk" and d.fingerprint is None for d in matrix.datasets):
        matrix = resolve_data(matrix, store.root)  # disk data: run ids follow its content
    stages = plan(matrix, only)
    check_changed_code(stages, store, recompute_changed)
    already_done = {s.run_id for s in stages if store.is_done(s.run_id)}
    restore_finished([s for s in stages if s.run_id in already_done], store)  # their spec/status files
    board = Board(stages, store, retry_failed, started_at)
    runnable = [s for s in stages if board.state(s) not in ("done", "settled")]
    if runnable:  # nothing to run (all done, or failed without --retry-failed): no worker, no model
        reporter = reporter or make_reporter(show_progress)
        done = [s for s in stages if s.run_id in already_done]
        eta = EtaModel(runnable, measured_times(store, done)[0], parallel=workers)
        settled = len(stages) - len(runnable) - len(already_done)  # failed before, not retried
        reporter.start(len(stages), len(already_done), eta, already_failed=settled)
        try:
            with sigterm_exits():
                if workers == 1:
                    _run_here(matrix, stages, store, retry_failed, started_at, reporter, poll_s)
                else:
                    plugins = loaded_plugins() if plugins is None else plugins
                    run_ids = [s.run_id for s in stages]
                    run_pool(
                        matrix, run_ids, store, workers, retry_failed, started_at, plugins, reporter, poll_s
                    )
        finally:
            reporter.close()
    return matrix_outcome(stages, store, already_done)


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
