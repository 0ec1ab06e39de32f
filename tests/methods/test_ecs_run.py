"""ECS end to end on the tiny ViT (and the CNN adaptation): a matrix with ``ecs``, ``ecs-weights`` and a
pruning method; the single-task base stage, exact delta targets counted from the stored weights, storage
columns in ``load_results()``, the phases in the log, the base task untouched, resume after a kill."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mtlprune.analysis import load_results
from mtlprune.engine.requirements import planned_stages
from mtlprune.engine.runner import run_stage
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.ecs import keep_count
from mtlprune.plan.stages import Stage, plan
from mtlprune.store import Store
from tests.engine.test_resume import Killed, _fingerprint, _kill_at
from tests.helpers import load_masks, tiny_matrix

pytestmark = pytest.mark.slow  # every test here trains stages

VIT = {"name": "vit_t_convnext", "width": 0.25, "head_width": 0.03125}
RUNTIME = {"device": "cpu", "log_every": 1, "save_cell_models": True, "checkpoint_every": 2}
TARGET = 0.8
SUBS = ("normal", "depth_zbuffer")


def _matrix(**overrides):
    settings = {
        "methods": [{"name": "ecs"}, {"name": "ecs-weights"}, {"name": "magnitude"}],
        "sparsities": [TARGET],
        "archs": [VIT],
        "finetune": {"steps": 5, "batch_size": 4},
        "runtime": RUNTIME,
        "controls": True,
    }
    return tiny_matrix(**{**settings, **overrides})


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    matrix = _matrix()
    store = Store(tmp_path_factory.mktemp("ecs"))
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    cells = {c.method.name: c for c in matrix.expand()}
    return matrix, store, cells


def _state(store, run_id):
    return torch.load(store.run_dir(run_id) / "model.pt", map_location="cpu", weights_only=True)


def _deltas(state, task):
    return {k: v for k, v in state.items() if k.startswith(f"deltas.{task}.")}


def test_the_base_stage_ran_once_and_its_steps_count_in_steps_total(vit_run):
    matrix, store, cells = vit_run
    stages = plan(matrix)
    dense = [s for s in stages if s.kind == "dense"]
    assert len(dense) == 2  # the multi-task dense stage and the single-task base
    (base,) = [s for s in dense if s.spec.data.tasks == ("segment_semantic",)]
    assert store.result(base.run_id).steps_total == matrix.train.steps
    planned = {p.run_id: p for p in planned_stages(stages)}
    for name in ("ecs", "ecs-weights"):
        result = store.result(cells[name].run_id)
        assert result.starts_from == "base"
        assert result.steps_method == planned[cells[name].run_id].steps == len(SUBS) * matrix.finetune.steps
        assert (
            result.steps_total
            == planned[cells[name].run_id].steps_total
            == matrix.train.steps + result.steps_method
        )
        assert result.method_state["base_run_id"] == base.run_id


@pytest.mark.parametrize("name", ["ecs", "ecs-weights"])
def test_each_delta_keeps_exactly_the_target_count_counted_from_the_weights(vit_run, name):
    _, store, cells = vit_run
    run_id = cells[name].run_id
    state = _state(store, run_id)
    masks = load_masks(store.run_dir(run_id))
    assert not any(k.startswith("gates.") for k in state)  # gates never leave the training
    for task in SUBS:
        deltas = _deltas(state, task)
        size = sum(v.numel() for v in deltas.values())
        nonzero = sum(int(torch.count_nonzero(v)) for v in deltas.values())
        assert nonzero == keep_count(TARGET, size)
        # the fixed support: nothing outside the mask chosen after the gate phase came back
        kept = sum(int(masks[k].sum()) for k in deltas)
        assert kept == nonzero and all(torch.all(v[~masks[k]] == 0) for k, v in deltas.items())
    result = store.result(run_id)
    for task in SUBS:
        assert result.sparsity[f"sparsity.delta.{task}"] == pytest.approx(TARGET, abs=1e-5)


def test_storage_columns_land_in_load_results(vit_run):
    _, store, cells = vit_run
    frame = load_results(store.root).set_index("method_name")
    for name in ("ecs", "ecs-weights"):
        row = frame.loc[name]
        state = _state(store, cells[name].run_id)
        base = sum(
            v.numel()
            for k, v in state.items()
            if k.startswith("backbone.") and "running" not in k and "num_batches" not in k
        )
        heads = sum(
            v.numel()
            for k, v in state.items()
            if k.startswith("heads.") and "running" not in k and "num_batches" not in k
        )
        nnz = {t: sum(int(torch.count_nonzero(v)) for v in _deltas(state, t).values()) for t in SUBS}
        assert row["params_stored"] == base + sum(nnz.values()) + heads
        assert row["params_index_bits"] == len(SUBS) * base
        for task in SUBS:
            assert row[f"params_delta_nonzero.{task}"] == nnz[task]
            assert row[f"sparsity.delta.{task}"] == pytest.approx(TARGET, abs=1e-5)
        assert row["steps_total"] > 0 and row["status"] == "done"
    assert (
        frame.loc["magnitude"]["sparsity.delta.normal"] != frame.loc["magnitude"]["sparsity.delta.normal"]
    )  # NaN


def test_the_phases_run_in_order_with_their_penalties(vit_run):
    _, store, cells = vit_run
    for name, phases in (("ecs", ("gates", "fixed", "act")), ("ecs-weights", ("gates", "fixed"))):
        records = [json.loads(line) for line in (store.run_dir(cells[name].run_id) / "log.jsonl").open()]
        seen = []
        for r in records:
            if "step" in r and (not seen or seen[-1] != r["phase"]):
                seen.append(r["phase"])
        assert seen == [f"{p}:{t}" for t in SUBS for p in phases]
        gate_steps = [r for r in records if r.get("phase", "").startswith("gates:") and "step" in r]
        assert all(r["extra.l0"] > 0 and "loss.segment_semantic" not in r for r in gate_steps)
        act_steps = [r for r in records if r.get("phase", "").startswith("act:") and "step" in r]
        assert all(r["extra.act_l1"] >= 0 for r in act_steps) and (name == "ecs") == bool(act_steps)


def test_the_base_task_is_the_base_network_and_sharing_changes_only_sub_tasks(vit_run):
    _, store, cells = vit_run
    ecs, weights = (store.result(cells[n].run_id) for n in ("ecs", "ecs-weights"))
    seg = {k: v for k, v in ecs.metrics.items() if k.startswith("segment_semantic.")}
    assert seg == {k: v for k, v in weights.metrics.items() if k.startswith("segment_semantic.")}
    assert ecs.method_state["thresholds"] and set(ecs.method_state["thresholds"].values()) == {0.15}
    assert set(weights.method_state["thresholds"].values()) == {0.0}
    assert ecs.metrics != weights.metrics


def test_a_killed_ecs_cell_resumes_to_the_same_end(vit_run, tmp_path):
    matrix, store, cells = vit_run
    cell = cells["ecs"]
    stage = Stage(cell)
    resumed = Store(tmp_path)
    for run_id in stage.requires:
        shutil.copytree(store.run_dir(run_id), resumed.run_dir(run_id))
    shutil.copytree(store.root / "data", resumed.root / "data")
    # inside the first sub-task's activation phase (its 5th step), then, resumed from the checkpoint at the
    # start of that phase, in the second sub-task's gate phase (phases of 2, 2 and 1 steps per sub-task)
    for at in (5, 3):
        progress, _ = _kill_at(at)
        with pytest.raises(Killed):
            run_stage(stage, resumed, matrix.runtime, progress)
    torch.rand(7)  # the resuming process has a history of its own
    outcome = run_stage(stage, resumed, matrix.runtime)
    assert outcome.status == "done", resumed.status_record(cell.run_id).traceback
    assert _fingerprint(resumed, cell.run_id) == _fingerprint(store, cell.run_id)


def test_the_cnn_adaptation_a_dense_mtl_base_and_the_faithful_rule(tmp_path):
    methods = [
        {"name": "ecs", "params": {"base": "dense_mtl", "heads": "from_dense", "budget": "split"}},
        {"name": "ecs", "params": {"control": "faithful"}},
    ]
    matrix = _matrix(
        methods=methods, archs=[tiny_matrix().archs[0].model_dump(exclude_defaults=True)], controls=False
    )
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    assert len(matrix.dense_stages()) == 2  # the faithful variant's single-task base
    dense_mtl, faithful = (store.result(c.run_id) for c in matrix.expand())
    assert dense_mtl.starts_from == "dense"
    assert dense_mtl.steps_total == matrix.train.steps + matrix.finetune.steps  # split between sub-tasks
    for task in SUBS:
        assert dense_mtl.sparsity[f"sparsity.delta.{task}"] == pytest.approx(TARGET, abs=1e-5)
    # the reference's rule: the support the last gate-phase pass used (gates start open: a dense delta; the
    # delta of that pass is the first step's update, non-zero wherever a gradient reached)
    assert faithful.steps_method == len(SUBS) * matrix.finetune.steps
    assert faithful.sparsity["params_index_bits"] == dense_mtl.sparsity["params_index_bits"]
    assert all(0.0 <= faithful.sparsity[f"sparsity.delta.{t}"] < TARGET for t in SUBS)
