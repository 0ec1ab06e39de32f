"""What every stage does first and last: its spec file and running status; its evaluation, costs,
provenance, result and done status."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from mtlprune.engine.build import resolve_device
from mtlprune.engine.checkpoint import StageCheckpoint
from mtlprune.engine.costs import INPUT_SPARSE_IMAGES, count_flops, count_flops_input_sparse, measure_latency
from mtlprune.engine.determinism import stage_environment
from mtlprune.engine.evaluate import evaluate
from mtlprune.engine.logs import Progress
from mtlprune.engine.models.delta import DeltaSharedMTL
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.spec import DenseSpec, RunSpec, RuntimeSpec, semantic_dump
from mtlprune.store import SPEC, STATUS, Store, atomic_write_json
from mtlprune.store.integrity import record_artefacts
from mtlprune.store.provenance import device_name, provenance, timing
from mtlprune.store.records import CellResult, DenseResult

R = TypeVar("R", DenseResult, CellResult)
S = TypeVar("S", DenseSpec, RunSpec)


def run_once(
    body: Callable[[S, Store, RuntimeSpec, torch.device, dict[str, Any], Progress | None], R],
    spec: S,
    store: Store,
    runtime: RuntimeSpec,
    progress: Progress | None,
) -> R:
    """A finished stage's stored result, else ``body`` run on the stage's device inside its determinism
    environment (mtlprune.engine.determinism), which ``body`` records in the result."""
    if store.is_done(spec.run_id):
        return store.result(spec.run_id)  # type: ignore[return-value]
    device = resolve_device(runtime)
    with stage_environment(device, runtime.num_threads) as determinism:
        return body(spec, store, runtime, device, determinism, progress)


def begin_stage(store: Store, run_id: str, spec: DenseSpec | RunSpec, extra: dict[str, Any]) -> Path:
    if spec.data.source == "disk" and spec.data.fingerprint is None:
        raise ValueError(
            f"data.fingerprint is not set for the {spec.data.dataset} data at {spec.data.root}: the run id "
            "would not follow the data's content; fill it in with "
            "mtlprune.plan.fingerprint.resolve_data(matrix, store root) first (mtlprune run does)"
        )
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / SPEC, spec_record(spec, extra))
    store.write_status(
        run_id, status="running", host=socket.gethostname(), pid=os.getpid(), started=time.time()
    )
    return run_dir


def spec_record(spec: DenseSpec | RunSpec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``spec.json`` holds: the run id, the spec, its identity and, for a cell, the stages it is
    compared to (``extra``; by default its dense stage and control cell)."""
    if extra is None:
        extra = (
            {"dense_run_id": spec.dense().run_id, "control_run_id": spec.control().run_id}
            if isinstance(spec, RunSpec)
            else {}
        )
    return {
        "run_id": spec.run_id,
        "spec": spec.model_dump(mode="json"),
        "identity": semantic_dump(spec),
        **extra,
    }


def restore_records(store: Store, spec: DenseSpec | RunSpec) -> list[Path]:
    """Write a finished stage's ``spec.json`` (it follows from the plan) and ``status.json`` (done) again
    when they are missing or damaged: the result decides (mtlprune.store.integrity). Returns what it wrote."""
    run_dir = store.run_dir(spec.run_id)
    damaged = {p.path for p in store.inspect(spec.run_id).problems}
    written = []
    if run_dir / SPEC in damaged:
        atomic_write_json(run_dir / SPEC, spec_record(spec))
        written.append(run_dir / SPEC)
    if run_dir / STATUS in damaged:
        store.write_status(spec.run_id, status="done")
        written.append(run_dir / STATUS)
    return written


def evaluate_on(
    model: Any, test_set: Any, spec: DenseSpec | RunSpec, device: torch.device
) -> dict[str, float]:
    """The stage's test metrics under its evaluation protocol."""
    return evaluate(model, test_set, spec.eval.effective_batch_size, device, protocol=spec.eval.protocol)


def measure_costs(
    model: MTLModel,
    test_set: Any,
    runtime: RuntimeSpec,
    device: torch.device,
    dense_result: DenseResult | None = None,
) -> dict[str, Any]:
    """Theoretical FLOPs at the evaluation resolution and, when asked, measured latency.

    Static counts (``flops_dense``, ``flops_sparse``: from shapes and weights) and the data-dependent
    count of every model (``flops_input_sparse``: zero activations cost nothing either, the mean over the
    first `INPUT_SPARSE_IMAGES` test images; a delta-shared model's is its shared forward,
    ``flops_shared``; a cell also gets its dense stage's as ``dense_flops_input_sparse``);
    docs/accounting.md. Latency is measured as it is: masked weights are stored and multiplied as dense
    tensors, so a pruned model is no faster than the dense one unless a sparse kernel is used; the result
    says so.
    """
    sample = test_set[0]
    input_hw = tuple(sample["input"].shape[-2:])
    output_hw = tuple(sample[model.tasks[0]].shape[-2:])
    flops: dict[str, Any] = {}
    if isinstance(model, DeltaSharedMTL):  # a multi-model method (ECS): each task's own network
        flops.update(delta_flops(model, input_hw, output_hw))
    else:
        flops.update(count_flops(model, input_hw, output_hw))
    images = [test_set[i]["input"].unsqueeze(0) for i in range(min(INPUT_SPARSE_IMAGES, len(test_set)))]
    flops.update(count_flops_input_sparse(model, images, output_hw))
    dense_costs = {} if dense_result is None else dense_result.costs or {}
    if "flops_input_sparse" in dense_costs:  # the dense model's on this axis (its zeros are its own)
        flops["dense_flops_input_sparse"] = dense_costs["flops_input_sparse"]
    out: dict[str, Any] = {"costs": {"input_hw": list(input_hw), **flops}}
    if runtime.measure_latency:
        latency = measure_latency(model, input_hw, device=device)
        latency["note"] = "masks are applied to dense tensors: no speed-up is expected from masking alone"
        if dense_result is not None and dense_result.latency is not None:
            latency["dense_latency_ms"] = dense_result.latency["latency_ms"]
        out["latency"] = latency
    return out


def delta_flops(
    model: DeltaSharedMTL, input_hw: tuple[int, int], output_hw: tuple[int, int] | None
) -> dict[str, int]:
    """Static FLOPs of a delta-shared model (ECS) without activation sharing, from each task's own network
    (``DeltaSharedMTL.standalone``) counted as any model is: ``flops_<kind>.path.<task>`` is that network,
    ``.backbone`` the base backbone, ``.delta.<task>`` a sub-task's backbone pass (W_b + δ_t, dense in
    compute: a sparse delta added to dense weights leaves them dense), ``.head.<task>`` each head, and
    ``flops_<kind>`` all of them: the base backbone once, every sub-task's backbone pass, every head.

    This is what a deployment without activation sharing computes: the static count of the joint task set
    (``flops_sparse``, like every other method's). What activation sharing saves depends on the data and is
    counted apart (``flops_shared``: mtlprune.engine.costs.count_flops_shared; docs/accounting.md).
    """
    out: dict[str, int] = {}
    parts: dict[str, dict[str, int]] = {}
    for task in model.tasks:
        counted = count_flops(model.standalone(task), input_hw, output_hw)
        for kind in ("dense", "sparse"):
            parts.setdefault(kind, {})
            head = counted[f"flops_{kind}.head.{task}"]
            parts[kind][f"head.{task}"] = head
            parts[kind][f"path.{task}"] = counted[f"flops_{kind}.path.{task}"]
            backbone = counted[f"flops_{kind}.backbone"]
            parts[kind]["backbone" if task == model.base_task else f"delta.{task}"] = backbone
    for kind in ("dense", "sparse"):
        p = parts[kind]
        out[f"flops_{kind}"] = (
            p["backbone"]
            + sum(p[f"delta.{t}"] for t in model.sub_tasks)
            + sum(p[f"head.{t}"] for t in model.tasks)
        )
        out[f"flops_{kind}.backbone"] = p["backbone"]
        for prefix in ("delta", "head", "path"):
            for task in model.tasks:
                if f"{prefix}.{task}" in p:
                    out[f"flops_{kind}.{prefix}.{task}"] = p[f"{prefix}.{task}"]
    return out


def result_provenance(
    start: float,
    device: torch.device,
    resume: dict[str, Any] | None,
    determinism: dict[str, Any],
    method_code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where, when and with what the result was produced (mtlprune.store.provenance), and whether it
    resumed."""
    end = time.time()
    extra = {} if method_code is None else {"method_code": method_code}
    return {
        "wall_s": end - start,
        "device": str(device),
        "determinism": determinism,
        "provenance": {
            **provenance(device_name(str(device))),
            **timing(start, end),
            # CPU float reductions depend on the thread count: mtlprune.engine.determinism fixes it per stage
            "torch_threads": torch.get_num_threads(),
            **extra,
        },
        "resumed_from": None if resume is None else {"call": resume["call"], "step": resume["step"]},
    }


def finish_stage(
    store: Store, run_id: str, result: DenseResult | CellResult, checkpoint: StageCheckpoint
) -> None:
    """Write the result, mark the stage done, and drop its checkpoint (in that order: a kill in between
    leaves a finished stage with a stale checkpoint, never a lost result)."""
    if checkpoint.loaded is not None:
        raise RuntimeError(
            f"{checkpoint.path} belongs to train() call {checkpoint.resume_call}, which this stage never "
            "made: the method's code changed since the checkpoint; delete it to restart the stage"
        )
    files = record_artefacts(store.run_dir(run_id))  # the files the result stands on, checked on every read
    store.write_result(run_id, result.model_copy(update={"files": files}))
    store.write_status(run_id, status="done", finished=time.time())
    checkpoint.remove()
