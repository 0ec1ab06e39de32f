"""Run one stage idempotently into the store: a finished stage is skipped; a failing one records its error
in ``status.json`` (never raises), so the rest of the matrix goes on."""

from __future__ import annotations

from dataclasses import dataclass

from mtlprune.engine.cell import run_cell
from mtlprune.engine.dense import run_dense
from mtlprune.engine.failures import record_failure
from mtlprune.engine.logs import Progress
from mtlprune.plan.stages import Stage
from mtlprune.spec import RunSpec, RuntimeSpec
from mtlprune.store import Store


@dataclass(frozen=True)
class StageOutcome:
    run_id: str
    status: str  # done | failed
    kind: str | None = None  # for a failure: one of records.FAILURE_KINDS
    error: str | None = None


def run_stage(
    stage: Stage, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> StageOutcome:
    """Run one stage (resuming from its checkpoint when it has one); a failure is recorded, not raised.

    A cell whose dense stage (or a stage its method asks for) has no result is ``blocked`` (with that
    stage's error when it failed).
    The caller holds the stage's lock (mtlprune.execution.locks); this function does no locking.
    """
    if not isinstance(stage, Stage):
        raise TypeError(f"run_stage takes a plan's Stage (mtlprune.plan.stages), got {type(stage).__name__}")
    run_id = stage.run_id
    if store.is_done(run_id):
        return StageOutcome(run_id, "done")
    try:
        spec = stage.spec
        if isinstance(spec, RunSpec):
            for dense_id in stage.requires:  # its dense stage, then any its method asks for
                if not store.is_done(dense_id):
                    record = store.status_record(dense_id)
                    why = (record and record.error) or f"status {store.status(dense_id)}"
                    raise StageBlocked(f"its dense stage {dense_id} has no result ({why})")
            run_cell(spec, store, runtime, progress)
        else:
            run_dense(spec, store, runtime, progress)
        return StageOutcome(run_id, "done")
    except Exception as exc:  # one broken stage must not stop the matrix
        kind = "blocked" if isinstance(exc, StageBlocked) else None
        record = record_failure(store, run_id, exc, kind)
        return StageOutcome(run_id, "failed", record.kind, record.error)


class StageBlocked(RuntimeError):
    """A cell cannot start: the dense stage it needs has no result."""
