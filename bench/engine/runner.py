"""Run one stage idempotently into the store: a finished stage is skipped (its spec file written again if it
went missing); a damaged result is set aside and computed again (mtlprune.store.integrity); a failing stage
records its error in ``status.json`` (never raises), so the rest of the matrix goes on."""

from __future__ import annotations

from dataclasses import dataclass

from mtlprune.engine.cell import run_cell
from mtlprune.engine.dense import run_dense
from mtlprune.engine.failures import record_failure
from mtlprune.engine.lifecycle import restore_records
from mtlprune.engine.logs import Progress
from mtlprune.plan.stages import Stage
from mtlprune.spec import RunSpec, RuntimeSpec
from mtlprune.store import Store
from mtlprune.store.integrity import DAMAGED


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
    state = store.inspect(run_id)
    if state.status == "done":
        restore_records(store, stage.spec)
        return StageOutcome(run_id, "done")
    try:
        if state.status == DAMAGED:
            person = [p for p in state.problems if p.action == "person"]
            if person:  # e.g. another stage's result in this folder: never overwritten by a rerun
                raise StageNeedsPerson("; ".join(f"{p.path}: {p.what}" for p in person))
            store.set_aside(run_id, state.damaged)  # a result that is not one: kept aside, computed again
        spec = stage.spec
        if isinstance(spec, RunSpec):
            for dense_id in stage.requires:  # its dense stage, then any its method asks for
                required = store.inspect(dense_id)
                if required.status != "done":
                    why = required.error or f"status {required.status}"
                    raise StageBlocked(f"its dense stage {dense_id} has no result ({why})")
            run_cell(spec, store, runtime, progress)
        else:
            run_dense(spec, store, runtime, progress)
        return StageOutcome(run_id, "done")
    except Exception as exc:  # one broken stage must not stop the matrix
        kind = "blocked" if isinstance(exc, StageBlocked) else None
        record = record_failure(store, run_id, exc, kind)
        return StageOutcome(run_id, "failed", record.kind, record.error)


def restore_finished(stages: list[Stage], store: Store) -> None:
    """Write again the spec and status files of finished stages where they went missing or were damaged
    (what ``mtlprune store check`` promises a run does); the results are not touched."""
    for stage in stages:
        restore_records(store, stage.spec)


class StageNeedsPerson(RuntimeError):
    """The stage's folder holds something a rerun must not overwrite (``mtlprune store check`` lists it)."""


class StageBlocked(RuntimeError):
    """A cell cannot start: the dense stage it needs has no result."""
