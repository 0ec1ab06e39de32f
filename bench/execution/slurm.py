"""Slurm job arrays through submitit, and the same code path on this machine for CI.

``submit_matrix`` sends one job array per level of the stage graph: the pending dense stages, then the
pending cells, whose array waits for the dense array with ``afterany`` (a failed dense stage then marks its
cells ``blocked`` instead of leaving them queued forever). Each array task runs ``StageTask(run_id)``: it
claims the stage's lock like any local worker (so submitting twice, or next to a local ``mtlprune run``, never
runs a stage twice) and runs it through ``run_stage``, which resumes from the stage's checkpoint.

``StageTask`` is checkpointable: when Slurm signals a task before its time limit, or preempts it, submitit
calls ``checkpoint()``, which resubmits the same call; the requeued task takes over its own earlier lock and
the stage resumes from its last in-stage checkpoint (``runtime.checkpoint_every`` steps).

``executor="submitit-local"`` runs the same tasks as local submitit jobs (no dependencies there: the
submitter waits for the dense level before it submits the cells). Nothing here needs a cluster to import.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlprune import registry
from mtlprune.engine.runner import restore_finished
from mtlprune.execution.claim import POLL_S, Board, LockOptions, claim_loop, lock_summary, run_one
from mtlprune.execution.events import log_event
from mtlprune.execution.local import cpu_count
from mtlprune.execution.locks import current_job
from mtlprune.execution.matrix import MatrixOutcome, loaded_plugins, matrix_outcome
from mtlprune.execution.progress import make_reporter
from mtlprune.plan.fingerprint import resolve_data
from mtlprune.plan.stages import Stage, plan
from mtlprune.spec import MatrixSpec
from mtlprune.spec.models import SlurmSpec
from mtlprune.spec.select import Selection
from mtlprune.store import Store

EXECUTORS = ("local", "slurm", "submitit-local")
SUBMITIT_EXECUTORS = ("slurm", "submitit-local")
REPO_ROOT = Path(__file__).resolve().parents[2]  # bench/<layer>/<module>.py
SLURM_DIR = "slurm"


class StageTask:
    """One stage as a submitit job: ``task(run_id)`` claims, runs (resuming), releases; requeue-safe."""

    def __init__(
        self,
        matrix: dict[str, Any],
        store_root: str,
        plugins: list[str],
        retry_failed: bool,
        started_at: float,
        poll_s: float = POLL_S,
    ) -> None:
        self.matrix, self.store_root, self.plugins = matrix, store_root, plugins
        self.retry_failed, self.started_at, self.poll_s = retry_failed, started_at, poll_s

    def __call__(self, run_id: str) -> str:
        registry.load_plugins(self.plugins)
        matrix = MatrixSpec.model_validate(self.matrix)
        import torch

        torch.set_num_threads(matrix.runtime.num_threads or cpu_count())  # the task's CPUs, not the node's
        job = _submitit_job_id() or current_job()
        status = run_one(
            run_id, plan(matrix), Store(self.store_root), matrix.runtime,
            retry_failed=self.retry_failed, started_at=self.started_at, reporter=make_reporter(True),
            poll_s=self.poll_s, locks=LockOptions(job=job),
        )  # fmt: skip
        print(f"stage {run_id}: {status}", flush=True)
        return status

    def checkpoint(self, run_id: str) -> Any:
        """Called by submitit on the requeue signal: run the same stage again (it resumes there)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run_id)


def _submitit_job_id() -> str | None:
    try:
        from submitit import JobEnvironment

        return str(JobEnvironment().job_id)
    except Exception:  # not inside a submitit job
        return None


def setup_lines(spec: SlurmSpec) -> list[str]:
    """Shell lines before each task: make the repository importable, then the user's own setup."""
    root = shlex.quote(str(REPO_ROOT))
    return [f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}", *spec.setup]


def slurm_parameters(spec: SlurmSpec, job_name: str) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` keywords for ``spec`` (one task, one node per stage)."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": spec.timeout_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": spec.cpus_per_task,
        "array_parallelism": spec.max_parallel,
        "signal_delay_s": spec.signal_delay_s,
        "stderr_to_stdout": True,
        "setup": setup_lines(spec),
    }
    if spec.gpus_per_task:
        params["gpus_per_node"] = spec.gpus_per_task
    for name in ("partition", "mem", "account", "qos", "constraint"):
        value = getattr(spec, name)
        if value is not None:
            params[name] = value
    if spec.extra:
        params["additional_parameters"] = dict(spec.extra)
    return params


def local_parameters(spec: SlurmSpec) -> dict[str, Any]:
    """The ``LocalExecutor.update_parameters`` keywords: the same time limit, signal and setup."""
    import torch

    gpus = min(spec.gpus_per_task, torch.cuda.device_count()) if torch.cuda.is_available() else 0
    return {
        "timeout_min": spec.timeout_min,
        "signal_delay_s": spec.signal_delay_s,
        "gpus_per_node": gpus,
        "stderr_to_stdout": True,
        "setup": setup_lines(spec),
    }


def make_executor(kind: str, folder: Path, spec: SlurmSpec, job_name: str) -> Any:
    """A submitit executor writing its job files and logs under ``folder/<job id>``."""
    import submitit

    if kind == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=spec.max_requeue)
        except RuntimeError as exc:
            raise ValueError(
                f"--executor slurm needs a Slurm cluster ({exc}); run it on a login node, or test the same "
                "code path here with --executor submitit-local"
            ) from None
        executor.update_parameters(**slurm_parameters(spec, job_name))
        return executor
    if kind == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=spec.max_requeue)
        executor.update_parameters(**local_parameters(spec))
        return executor
    raise ValueError(f"unknown submitit executor {kind!r}; expected one of {', '.join(SUBMITIT_EXECUTORS)}")


@dataclass
class Submission:
    """What was sent: job ids per level, where the logs go, and (when waited for) the outcome."""

    jobs: dict[str, list[str]] = field(default_factory=dict)  # "dense" / "cell" -> job ids
    log_dir: Path | None = None
    blocked: list[str] = field(default_factory=list)
    outcome: MatrixOutcome | None = None

    def array_id(self, level: str) -> str | None:
        ids = self.jobs.get(level) or []
        return ids[0].split("_")[0] if ids else None


def pending_for_submission(
    stages: list[Stage], store: Store, board: Board
) -> tuple[list[Stage], list[Stage]]:
    """(to submit, cells to mark blocked now): not done, not failed for good, not held by a live lock."""
    submit, blocked = [], []
    for stage in stages:
        state = board.state(stage)
        if state in ("done", "settled"):
            continue
        held = lock_summary(store.run_dir(stage.run_id))
        if held is not None and held[1] is None:
            continue  # a live worker has it
        if any(board.settled_failed(r) for r in stage.requires):
            blocked.append(stage)
        else:
            submit.append(stage)
    return submit, blocked


def submit_matrix(
    matrix: MatrixSpec,
    store: Store,
    *,
    executor: str = "slurm",
    slurm: SlurmSpec | None = None,
    retry_failed: bool = False,
    plugins: list[str] | None = None,
    poll_s: float = POLL_S,
    echo: Any = print,
    only: Selection | None = None,
) -> Submission:
    """Submit the pending stages as one array per level; with ``submitit-local`` also wait for them."""
    if executor not in SUBMITIT_EXECUTORS:
        raise ValueError(f"unknown submitit executor {executor!r}; expected one of {SUBMITIT_EXECUTORS}")
    spec = slurm or matrix.runtime.slurm
    started_at = time.time()
    if any(d.source == "disk" and d.fingerprint is None for d in matrix.datasets):
        matrix = resolve_data(matrix, store.root)  # disk data: run ids follow its content
    stages = plan(matrix, only)
    already_done = {s.run_id for s in stages if store.is_done(s.run_id)}
    restore_finished([s for s in stages if s.run_id in already_done], store)  # their spec/status files
    board = Board(stages, store, retry_failed, started_at)
    submit, blocked = pending_for_submission(stages, store, board)
    submission = Submission(log_dir=store.root / SLURM_DIR)
    if blocked:  # their dense stage failed for good: record that here instead of queueing a job for it
        claim_loop(blocked, store, matrix.runtime, retry_failed=retry_failed, started_at=started_at)
        submission.blocked = [s.run_id for s in blocked]
        echo(f"{len(blocked)} cell(s) blocked: their dense stage failed (see `mtlprune status`)")
    task = StageTask(
        matrix.model_dump(mode="json"), str(store.root.resolve()),
        loaded_plugins() if plugins is None else plugins, retry_failed, started_at, poll_s,
    )  # fmt: skip
    folder = (store.root / SLURM_DIR).resolve()
    for level in ("dense", "cell"):
        level_stages = [s for s in submit if s.kind == level]
        if not level_stages:
            continue
        ex = make_executor(executor, folder, spec, f"bench-{matrix.name}-{level}")
        ids = [s.run_id for s in level_stages]
        if executor == "slurm":
            dense_array = submission.array_id("dense")
            if level == "cell" and dense_array is not None:
                ex.update_parameters(dependency=f"afterany:{dense_array}")
            jobs = ex.map_array(task, ids)
            _log_submitted(store, jobs, ids, executor)
        else:
            jobs = _run_local_level(ex, task, ids, spec.max_parallel, store)
        submission.jobs[level] = [str(j.job_id) for j in jobs]
        after = (
            f", after job {submission.array_id('dense')}"
            if level == "cell" and "dense" in submission.jobs
            else ""
        )
        first = submission.jobs[level][0].split("_")[0]
        echo(f"{level} stages: {len(ids)} task(s) in job {first}{after}")
    if not submission.jobs:
        echo("nothing to submit: every stage is done, failed (use --retry-failed) or running elsewhere")
    elif executor == "slurm":
        echo(f"logs: {folder}/<job>_<task>/<job>_<task>_0_log.out; watch with `mtlprune status`")
    with contextlib.suppress(OSError):
        (folder / "%j").rmdir()  # submitit creates the pattern folder itself, empty
    if executor == "submitit-local":
        submission.outcome = matrix_outcome(stages, store, already_done)
    return submission


def _log_submitted(store: Store, jobs: list[Any], ids: list[str], executor: str) -> None:
    for job, run_id in zip(jobs, ids, strict=True):
        log_event(store, "submit", run_id, job=str(job.job_id), executor=executor)


def _run_local_level(ex: Any, task: StageTask, ids: list[str], max_parallel: int, store: Store) -> list[Any]:
    """Local submitit jobs have no dependencies nor array cap: ``max_parallel`` at a time, wait for all."""
    jobs: list[Any] = []
    for start in range(0, len(ids), max_parallel):
        chunk = ids[start : start + max_parallel]
        batch = ex.map_array(task, chunk)
        _log_submitted(store, batch, chunk, "submitit-local")
        for job in batch:
            try:
                job.result()  # a stage failure is recorded in the store; this catches the job's own crash
            except Exception as exc:
                print(f"local job {job.job_id} failed: {exc}", file=sys.stderr)
        jobs += batch
    return jobs
