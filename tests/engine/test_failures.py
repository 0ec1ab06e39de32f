"""Failures are isolated and explained: exception, divergence (NaN/Inf loss), out of memory, blocked cells."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pytest
import torch

import mtlprune.methods  # noqa: F401  (registers the built-in methods)
from mtlprune.engine.context import MethodContext
from mtlprune.engine.failures import failure_kind, log_tail
from mtlprune.engine.runner import run_stage
from mtlprune.engine.train import Divergence, TrainCallback
from mtlprune.methods.base import PruningMethod
from mtlprune.plan.stages import plan
from mtlprune.registry import METHODS
from mtlprune.store import Store
from tests.helpers import tiny_matrix


class _NaNWeights(TrainCallback):
    """Weights the task losses with NaN from step 3 on: the weighted loss becomes non-finite."""

    def loss_weights(self, step: int, losses: Mapping[str, torch.Tensor]) -> Mapping[str, float] | None:
        return {t: math.nan for t in losses} if step >= 3 else None


class _Diverging(PruningMethod):
    """Test-only: prunes, then trains into a NaN loss at step 3."""

    def run(self, ctx: MethodContext) -> None:
        ctx.apply_masks(ctx.select_masks({n: p.detach().abs() for n, p in ctx.prunable().items()}))
        ctx.train(
            ctx.spec.finetune.model_copy(update={"steps": 5}), phase="finetune", callbacks=[_NaNWeights()]
        )


class _OutOfMemory(PruningMethod):
    """Test-only: runs out of (device) memory."""

    def run(self, ctx: MethodContext) -> None:
        ctx.log(note="allocating")
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class _Raising(PruningMethod):
    """Test-only: a plain bug."""

    def run(self, ctx: MethodContext) -> None:
        ctx.log(note="about to fail")
        raise KeyError("no such layer: head.depth.conv9")


TEST_METHODS = {"test-diverging": _Diverging, "test-oom": _OutOfMemory, "test-raising": _Raising}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    for name, cls in TEST_METHODS.items():
        METHODS.register(name)(cls)
    try:
        matrix = tiny_matrix(
            methods=[{"name": n} for n in [*TEST_METHODS, "magnitude"]],
            sparsities=[0.5],
            runtime={"device": "cpu", "log_every": 1},
        )
        store = Store(tmp_path_factory.mktemp("failures"))
        stages = plan(matrix)
        results = {}
        for stage in stages:
            label = "dense" if stage.kind == "dense" else stage.spec.method.name
            results[label] = run_stage(stage, store, matrix.runtime)
        yield store, stages, results
    finally:
        for name in TEST_METHODS:
            METHODS._items.pop(name)


@pytest.mark.slow
def test_a_divergence_is_reported_as_such_with_its_step(outcomes):
    store, _, results = outcomes
    outcome = results["test-diverging"]
    assert outcome.status == "failed" and outcome.kind == "diverged"
    assert outcome.error.startswith("Divergence: non-finite loss nan at step 3")
    record = store.status_record(outcome.run_id)
    assert record.kind == "diverged" and record.status == "failed"
    # the last log lines: the finite steps 0, 1, 2 of the finetune before the divergence
    steps = [json.loads(line)["step"] for line in record.log_tail]
    assert steps == [0, 1, 2]


@pytest.mark.slow
def test_out_of_memory_and_exceptions_are_told_apart(outcomes):
    store, _, results = outcomes
    oom, raising = results["test-oom"], results["test-raising"]
    assert (oom.kind, raising.kind) == ("oom", "error")
    assert oom.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert raising.error == "KeyError: 'no such layer: head.depth.conv9'"
    record = store.status_record(raising.run_id)
    assert json.loads(record.log_tail[-1])["note"] == "about to fail"
    assert "raise KeyError" in record.traceback and record.pid > 0 and record.host


@pytest.mark.slow
def test_the_rest_of_the_matrix_goes_on(outcomes):
    store, _, results = outcomes
    assert results["dense"].status == "done" and results["magnitude"].status == "done"
    assert store.is_done(results["magnitude"].run_id)


@pytest.mark.slow
def test_a_cell_whose_dense_stage_failed_is_blocked(tmp_path):
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}], sparsities=[0.5], train={"steps": 6, "lr": 1.0e-3, "batch_size": 64}
    )
    store = Store(tmp_path)
    dense, cell = plan(matrix)[:2]
    failed = run_stage(dense, store, matrix.runtime)  # batch 64 > 8 training frames
    assert failed.kind == "error" and "batch_size 64 is larger than the training split" in failed.error
    blocked = run_stage(cell, store, matrix.runtime)
    assert blocked.kind == "blocked"
    assert blocked.error.startswith(f"StageBlocked: its dense stage {dense.run_id} has no result (ValueError")


def test_failure_kinds_and_log_tail(tmp_path):
    assert failure_kind(Divergence("x")) == "diverged"
    assert failure_kind(MemoryError()) == "oom"
    assert failure_kind(RuntimeError("MPS backend out of memory")) == "oom"
    assert failure_kind(ValueError("out of memory")) == "error"  # only allocator errors say so
    assert log_tail(tmp_path) == []
    (tmp_path / "log.jsonl").write_text("".join(f'{{"step": {i}}}\n' for i in range(30)))
    assert log_tail(tmp_path, 3) == ['{"step": 27}', '{"step": 28}', '{"step": 29}']
