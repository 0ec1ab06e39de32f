"""The dense stage: train the shared dense model (or resume it), evaluate it and its trivial predictor."""

from __future__ import annotations

import time
from typing import Any

import torch

from mtlprune.engine.build import (
    build_model,
    build_splits,
    loading,
    save_state,
    split_sizes,
)
from mtlprune.engine.convergence import convergence_window, loss_convergence
from mtlprune.engine.determinism import seed_everything, stage_seed
from mtlprune.engine.divergence import DivergenceGuard, check_final_metrics
from mtlprune.engine.lifecycle import (
    begin_stage,
    evaluate_on,
    finish_stage,
    measure_costs,
    result_provenance,
    run_once,
)
from mtlprune.engine.logs import Progress, log_records, open_log
from mtlprune.engine.models.pretrained import load_backbone_weights
from mtlprune.engine.sparsity import sparsity_report
from mtlprune.engine.train import TrainingData, train
from mtlprune.engine.trivial import fit_trivial
from mtlprune.registry import DATASETS
from mtlprune.spec import DenseSpec, RuntimeSpec
from mtlprune.store import Store
from mtlprune.store.records import DenseResult
from mtlprune.vocabulary import direction


def run_dense(
    spec: DenseSpec, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> DenseResult:
    """Train the dense stage (or resume it), evaluate it and its trivial predictor, write result.json."""
    return run_once(_run_dense, spec, store, runtime, progress)


def _run_dense(
    spec: DenseSpec,
    store: Store,
    runtime: RuntimeSpec,
    device: torch.device,
    determinism: dict[str, Any],
    progress: Progress | None,
) -> DenseResult:
    run_id = spec.run_id
    run_dir = begin_stage(store, run_id, spec, {})
    start = time.time()
    train_set, val_set, test_set = build_splits(spec, store)
    seed_everything(stage_seed(run_id))
    torch.manual_seed(spec.seed)  # the initialisation: a function of the seed alone, shared by every cell
    model = build_model(spec)
    if spec.arch.pretrained is not None:
        load_backbone_weights(model.backbone, spec.arch.pretrained)
    save_state(run_dir / "init.pt", model.state_dict())
    logger, checkpoint = open_log(run_dir, runtime, progress)
    resume = checkpoint.take(1)
    # The training loss of every step in the convergence window (mtlprune.engine.convergence), checkpointed
    # with the stage so that a resumed stage measures exactly what an uninterrupted one would.
    window = convergence_window(spec.train.steps)
    tail: list[tuple[int, float]] = [] if resume is None else [tuple(p) for p in resume["owner"]["tail"]]
    call = checkpoint.for_call(1, lambda: {"tail": [list(p) for p in tail]})
    call.resume = resume
    rewind_at = spec.train.rewind_at
    if rewind_at == 0:
        save_state(run_dir / "rewind.pt", model.state_dict())

    def on_step(step: int, scalars: dict[str, float]) -> None:
        if step + 1 == rewind_at:  # the weights after `rewind_at` optimizer steps, for rewinding methods
            save_state(run_dir / "rewind.pt", model.state_dict())
        if step >= window:
            tail.append((step, scalars["loss"]))
        logger({"phase": "dense", "step": step, **scalars})

    guard = DivergenceGuard()  # its reference: this stage's own step-0 task losses (checkpointed)
    try:
        data = TrainingData.of(spec, train_set, val_set, device, loading(runtime, device))
        outcome = train(
            model, data, spec=spec.train, seed=spec.seed, on_step=on_step, checkpoint=call, guard=guard
        )
    finally:
        logger.close()
    save_state(run_dir / "model.pt", model.state_dict())
    channels = DATASETS.get(spec.data.dataset).task_channels
    # Fitted on the training split before the test split is read (the test split is read last).
    constant = fit_trivial(
        spec.data.dataset, {t: channels[t] for t in spec.data.tasks}, train_set, spec.eval.protocol
    )
    metrics = evaluate_on(model, test_set, spec, device)
    trivial = evaluate_on(constant, test_set, spec, torch.device("cpu"))
    check_final_metrics(metrics, trivial, direction)
    convergence = loss_convergence(tail, spec.train.steps)
    result = DenseResult(
        run_id=run_id,
        metrics=metrics,
        trivial_metrics=trivial,
        initial_losses=guard.reference,
        convergence=convergence,
        sparsity=sparsity_report(model),
        **measure_costs(model, test_set, runtime, device),
        steps_total=outcome.steps,
        rewind_step=rewind_at,
        selection={"rule": spec.eval.selection, "selected_step": outcome.selected_step},
        splits=split_sizes(train_set, val_set, test_set),
        **result_provenance(start, device, resume, determinism),
    )
    finish_stage(store, run_id, result, checkpoint)
    return result


def dense_initial_losses(store: Store, dense_id: str) -> dict[str, float] | None:
    """The untrained network's task losses of a dense stage (its result, else its log's step-0 record)."""
    losses = store.result(dense_id).initial_losses
    if losses:
        return {t: float(v) for t, v in losses.items()}
    for record in log_records(store.run_dir(dense_id), "dense"):
        if record["step"] == 0:
            found = {k.removeprefix("loss."): float(v) for k, v in record.items() if k.startswith("loss.")}
            return found or None
    return None
