"""A cell: one method at one sparsity, started from its dense stage's checkpoint; its sparsity checked, its
result written."""

from __future__ import annotations

import time
from typing import Any

import torch

from mtlprune.engine.build import (
    build_model,
    build_splits,
    load_state,
    loading,
    save_state,
    split_sizes,
)
from mtlprune.engine.context import MethodContext, TrainingSession
from mtlprune.engine.dense import dense_initial_losses
from mtlprune.engine.determinism import seed_everything, stage_seed
from mtlprune.engine.divergence import check_final_metrics
from mtlprune.engine.lifecycle import (
    begin_stage,
    evaluate_on,
    finish_stage,
    measure_costs,
    result_provenance,
    run_once,
)
from mtlprune.engine.logs import Progress, open_log
from mtlprune.engine.sparsity import sparsity_report
from mtlprune.registry import METHODS
from mtlprune.spec import RunSpec, RuntimeSpec
from mtlprune.store import Store
from mtlprune.store.maskio import MASKS, TASK_MASKS, write_masks, write_task_masks
from mtlprune.store.provenance import code_identity
from mtlprune.store.records import CellResult
from mtlprune.vocabulary import direction


def run_cell(
    spec: RunSpec, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> CellResult:
    """Run one cell's method on its dense stage's checkpoint (or resume it), evaluate, write result.json."""
    return run_once(_run_cell, spec, store, runtime, progress)


def _run_cell(
    spec: RunSpec,
    store: Store,
    runtime: RuntimeSpec,
    device: torch.device,
    determinism: dict[str, Any],
    progress: Progress | None,
) -> CellResult:
    run_id = spec.run_id
    dense_spec = spec.dense()
    dense_id = dense_spec.run_id
    if not store.is_done(dense_id):
        raise RuntimeError(f"dense stage {dense_id} has no result; it must finish before cell {run_id}")
    method_cls = METHODS.get(spec.method.name)
    extra = {"dense_run_id": dense_id, "control_run_id": spec.control().run_id}
    run_dir = begin_stage(store, run_id, spec, extra)
    start = time.time()
    train_set, val_set, test_set = build_splits(spec, store)
    model = build_model(spec)
    method = method_cls(spec.method.parsed_params())
    extra_stages = method.extra_stages(spec)
    for stage in extra_stages:
        if not store.is_done(stage.run_id):
            raise RuntimeError(f"stage {stage.run_id} has no result; it must finish before cell {run_id}")
    checkpoint = "model.pt" if method.starts_from == "dense" else "init.pt"
    model.load_state_dict(load_state(store.run_dir(dense_id) / checkpoint))
    model.to(device)
    logger, checkpoint = open_log(run_dir, runtime, progress)
    resume = checkpoint.loaded
    session = TrainingSession(
        logger=logger,
        checkpoint=checkpoint,
        loading=loading(runtime, device),
        initial_losses=dense_initial_losses(store, dense_id),
    )
    ctx = MethodContext(
        model,
        spec,
        train_set,
        device,
        val_set=val_set,
        dense_dir=store.run_dir(dense_id),
        session=session,
        stage_dirs={stage.run_id: store.run_dir(stage.run_id) for stage in extra_stages},
    )
    seed_everything(stage_seed(run_id))  # whatever ran before in this process, the method sees one world
    try:
        method.run(ctx)
    finally:
        logger.close()
    model = ctx.model  # the method may have replaced it (ctx.replace_model: ECS's delta-shared model)
    report = sparsity_report(model, requested=spec.target_sparsity)
    check_sparsity(spec, method, report, ctx)
    if session.masks is not None:
        write_masks(run_dir / MASKS, session.masks)
    if session.task_masks:
        write_task_masks(run_dir / TASK_MASKS, session.task_masks)
    if runtime.save_cell_models:
        save_state(run_dir / "model.pt", model.state_dict())
    dense_result = store.result(dense_id)
    dense_steps = dense_result.steps_total if method.starts_from == "dense" else 0
    dense_steps += sum(store.result(stage.run_id).steps_total for stage in extra_stages)
    metrics = evaluate_on(model, test_set, spec, device)
    check_final_metrics(metrics, dense_result.trivial_metrics, direction)
    result = CellResult(
        run_id=run_id,
        dense_run_id=dense_id,
        control_run_id=extra["control_run_id"],
        metrics=metrics,
        sparsity=report,
        **measure_costs(model, test_set, runtime, device, dense_result=dense_result),
        steps_total=dense_steps + session.steps_used,
        steps_method=session.steps_used,
        starts_from=method.starts_from,
        method_state=session.recorded,
        selection={"rule": spec.eval.selection, "selected_step": session.selected_step},
        splits=split_sizes(train_set, val_set, test_set),
        **result_provenance(start, device, resume, determinism, code_identity(method_cls)),
    )
    finish_stage(store, run_id, result, checkpoint)
    return result


def check_sparsity(spec: RunSpec, method: Any, report: dict[str, Any], ctx: MethodContext) -> None:
    """A method that misses its target, or un-zeroes a pruned weight, fails its cell loudly.

    The target is checked on the method's ``sparsity_axis``: the prunable set's sparsity, or (``delta``)
    each task's delta sparsity ``sparsity.delta.<task>`` on its own.
    """
    if ctx.masks is not None:
        params = ctx.prunable()
        for name, mask in ctx.masks.items():
            leaked = int((params[name].detach().cpu()[~mask] != 0).sum())
            if leaked:
                raise RuntimeError(
                    f"{spec.method.name}: {leaked} pruned weights of {name} are non-zero after training"
                )
    tolerance = method.sparsity_tolerance  # an instance may derive it from its params
    axis = getattr(method, "sparsity_axis", "prunable")
    if axis == "delta":
        achieved = {k: v for k, v in report.items() if k.startswith("sparsity.delta.")}
        if not achieved:
            raise RuntimeError(f"{spec.method.name}: sparsity axis 'delta', but the model has no deltas")
    else:
        achieved = {"achieved sparsity": report["achieved_sparsity"]}
    for what, value in achieved.items():
        if abs(value - spec.target_sparsity) > tolerance:
            raise RuntimeError(
                f"{spec.method.name}: {what} {value:.4f} misses target {spec.target_sparsity} "
                f"by more than the method's tolerance {tolerance}"
            )
