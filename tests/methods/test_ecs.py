"""ECS (methods/ecs.py) without training: exact-target arithmetic and projection, phase budgets, planned
steps, the single-task base stage in the plan, parameter validation. The trained runs are in
tests/methods/test_ecs_run.py (slow)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from mtlprune.engine.requirements import planned_stages
from mtlprune.methods.ecs import keep_count, phase_steps, project_to_target, split_steps
from mtlprune.plan.stages import plan
from mtlprune.registry import METHODS
from mtlprune.spec import ConfigError
from mtlprune.spec.select import Selection
from tests.helpers import TASKS3, tiny_matrix

PAPER = {"train": {"steps": 20000, "batch_size": 4}, "finetune": {"steps": 1000, "batch_size": 4}}


def _cell(name: str = "ecs", params: dict | None = None, target: float = 0.9, **kw):
    (cell,) = tiny_matrix(
        methods=[{"name": name, "params": params or {}}], sparsities=[target], **kw
    ).expand()
    return cell, METHODS.get(name)(cell.method.parsed_params())


# ------------------------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize("target", [0.5, 0.7, 0.3, 0.9, 0.99, 0.123])
@pytest.mark.parametrize("size", [10, 100, 1000, 12345, 335464])
def test_keep_count_is_the_exact_ceiling(target, size):
    assert keep_count(target, size) == math.ceil((1 - Fraction(str(target))) * size)


def test_keep_count_is_not_fooled_by_float_rounding():
    # (1 − 0.7)·10 is 3.0000000000000004 in floats: a float ceiling would keep 4
    assert math.ceil((1 - 0.7) * 10) == 4 and keep_count(0.7, 10) == 3
    assert keep_count(0.9, 10) == 1 and keep_count(0.95, 10) == 1 and keep_count(0.5, 3) == 2


def test_phase_steps_add_up_and_the_gate_phase_gets_a_step():
    assert phase_steps(10, (0.4, 0.3, 0.3)) == [4, 3, 3]
    assert phase_steps(6, (0.4, 0.3, 0.3)) == [2, 2, 2]
    assert phase_steps(2, (0.4, 0.3, 0.3)) == [1, 0, 1]
    assert phase_steps(1, (0.4, 0.3, 0.3)) == [1, 0, 0]
    assert phase_steps(1, (0.1, 0.9)) == [1, 0]
    assert phase_steps(7, (0.4, 0.6)) == [3, 4]
    for steps in range(1, 40):
        for fractions in ((0.4, 0.3, 0.3), (0.05, 0.9, 0.05), (0.5, 0.5)):
            out = phase_steps(steps, fractions)
            assert sum(out) == steps and out[0] >= 1 and min(out) >= 0
    assert split_steps(5, 2) == [3, 2]


def test_the_projection_keeps_exactly_k_of_the_largest_gated_values():
    delta = {"a": torch.tensor([0.5, -0.1, 0.0, 0.3]), "b": torch.tensor([[-0.2, 0.05], [0.4, -0.6]])}
    gates = {"a": torch.tensor([1.0, 1.0, 1.0, 0.0]), "b": torch.tensor([[1.0, 0.5], [0.5, 1.0]])}
    values, masks = project_to_target(delta, gates, keep=3)
    # |g·δ|: a = .5 .1 0 0, b = .2 .025 .2 .6 → the three largest: b[1,1] .6, a[0] .5, then b[0,0] .2
    # before b[1,0] .2 (a tie of |g·δ| broken by |δ|: .4 > .2 → b[1,0] first)
    assert masks["a"].tolist() == [True, False, False, False]
    assert masks["b"].tolist() == [[False, False], [True, True]]
    torch.testing.assert_close(values["b"], torch.tensor([[0.0, 0.0], [0.2, -0.6]]))  # g·δ is kept
    assert sum(int(torch.count_nonzero(v)) for v in values.values()) == 3


def test_a_closed_gate_s_entry_keeps_its_raw_delta_when_the_target_needs_it():
    delta = {"w": torch.tensor([0.5, -0.3, 0.2, 0.0])}
    gates = {"w": torch.tensor([0.0, 1.0, 0.0, 1.0])}
    values, masks = project_to_target(delta, gates, keep=2)
    assert masks["w"].tolist() == [True, True, False, False]  # g·δ: 0, .3, 0, 0 → .3, then |δ| .5
    torch.testing.assert_close(values["w"], torch.tensor([0.5, -0.3, 0.0, 0.0]))


def test_ties_are_broken_by_position():
    delta = {"w": torch.ones(6)}
    _, masks = project_to_target(delta, {"w": torch.ones(6)}, keep=4)
    assert masks["w"].tolist() == [True] * 4 + [False] * 2


# ------------------------------------------------------------------------------------- planning


def test_planned_steps_are_the_phases_of_every_sub_task():
    cell, ecs = _cell(**PAPER)
    assert ecs.task_budgets(cell) == {"normal": [400, 300, 300], "depth_zbuffer": [400, 300, 300]}
    assert ecs.planned_steps(cell) == 2 * 1000  # per_task: every sub-task on the finetune budget
    cell, split = _cell(params={"budget": "split"}, **PAPER)
    assert split.task_budgets(cell) == {"normal": [200, 150, 150], "depth_zbuffer": [200, 150, 150]}
    assert split.planned_steps(cell) == 1000
    cell, weights = _cell("ecs-weights", **PAPER)
    assert weights.task_budgets(cell) == {"normal": [400, 600], "depth_zbuffer": [400, 600]}
    assert weights.planned_steps(cell) == 2000


def test_the_single_task_base_stage_is_planned_once_and_shared_by_every_ecs_cell():
    matrix = tiny_matrix(
        methods=[{"name": "ecs"}, {"name": "ecs-weights"}, {"name": "magnitude"}],
        sparsities=[0.5, 0.9],
        seeds=[0, 1],
        **PAPER,
    )
    stages = plan(matrix)
    dense = [s for s in stages if s.kind == "dense"]
    # per seed: the shared multi-task dense stage and one single-task base stage
    assert len(dense) == 4
    bases = [s for s in dense if s.spec.data.tasks == ("segment_semantic",)]
    assert len(bases) == 2 and {b.spec.seed for b in bases} == {0, 1}
    for stage in stages:
        if stage.kind != "cell":
            continue
        spec = stage.spec
        if spec.method.name.startswith("ecs"):
            base = next(b for b in bases if b.spec.seed == spec.seed)
            assert stage.requires == (spec.dense().run_id, base.run_id)
            assert base.spec.train == spec.train and base.spec.arch == spec.arch
        else:
            assert stage.requires == (spec.dense().run_id,)
    # the base stage is a dense stage like any: the same run id as a one-task matrix's dense stage
    (one_task,) = tiny_matrix(
        datasets=[{**matrix.datasets[0].model_dump(exclude_defaults=True), "tasks": ["segment_semantic"]}],
        **PAPER,
    ).dense_stages()
    assert one_task.run_id in {b.run_id for b in bases if b.spec.seed == 0}
    # its steps count in every ECS cell's steps_total, the multi-task dense stage's do not
    planned = {p.run_id: p for p in planned_stages(stages)}
    for stage in stages:
        if stage.kind == "cell" and stage.spec.method.name == "ecs":
            p = planned[stage.run_id]
            assert p.starts_from == "base" and p.steps == 2000 and p.steps_total == 20000 + 2000
    # --only keeps the base stage of a selected ECS cell
    kept = plan(matrix, Selection.parse(["method=ecs,sparsity=0.9,seed=1"]))
    assert {s.run_id for s in kept if s.kind == "dense"} == {s.run_id for s in dense if s.spec.seed == 1}


def test_a_dense_mtl_base_plans_no_stage_and_starts_from_the_dense_model():
    cell, ecs = _cell(params={"base": "dense_mtl"}, **PAPER)
    assert ecs.extra_stages(cell) == [] and ecs.starts_from == "dense"
    assert cell.needs() == [cell.dense()]
    (p,) = planned_stages(
        plan(
            tiny_matrix(methods=[{"name": "ecs", "params": {"base": "dense_mtl"}}], sparsities=[0.9], **PAPER)
        )
    )[1:]
    assert p.steps_total == 20000 + 2000


def test_a_base_task_the_cell_does_not_train_is_a_config_error():
    with pytest.raises(ConfigError, match=r"methods\[0\].*base_task 'edge_texture'"):
        tiny_matrix(methods=[{"name": "ecs", "params": {"base_task": "edge_texture"}}])
    with pytest.raises(ConfigError, match="at least one sub-task"):
        tiny_matrix(
            methods=[{"name": "ecs"}],
            datasets=[{**tiny_matrix().datasets[0].model_dump(exclude_defaults=True), "tasks": ["normal"]}],
        )
    with pytest.raises(ConfigError, match="leaves a sub-task no step"):
        tiny_matrix(methods=[{"name": "ecs", "params": {"budget": "split"}}], finetune={"steps": 1})
    cell, ecs = _cell(params={"base_task": "normal"}, **PAPER)
    assert ecs.base_stage(cell).data.tasks == ("normal",)
    assert list(ecs.task_budgets(cell)) == ["segment_semantic", "depth_zbuffer"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"phases": [0.5, 0.3, 0.3]}, "sum to 1"),
        ({"phases": [0.0, 0.5, 0.5]}, "gate phase"),
        ({"stretch": [0.0, 1.5]}, "l < 0 < 1 < r"),
        ({"act_threshold": 0.1, "act_thresholds": [0.1]}, "not both"),
        ({"act_thresholds": [-0.1]}, ">= 0"),
    ],
)
def test_bad_params_are_rejected(params, message):
    with pytest.raises(ConfigError, match=message):
        tiny_matrix(methods=[{"name": "ecs", "params": params}])


def test_ecs_weights_has_two_phases_and_no_activation_params():
    with pytest.raises(ConfigError, match="act_threshold"):
        tiny_matrix(methods=[{"name": "ecs-weights", "params": {"act_threshold": 0.2}}])
    with pytest.raises(ConfigError):
        tiny_matrix(methods=[{"name": "ecs-weights", "params": {"phases": [0.4, 0.3, 0.3]}}])


def test_contract_declarations():
    for name in ("ecs", "ecs-weights"):
        cls = METHODS.get(name)
        assert cls.sparsity_axis == "delta" and cls.starts_from == "base"
    _, faithful = _cell(params={"control": "faithful"})
    assert faithful.sparsity_tolerance == 1.0
    _, target = _cell()
    assert target.sparsity_tolerance == 0.001


def test_tasks_of_the_tiny_matrix():
    assert TASKS3[0] == "segment_semantic"  # the default base task: the cell's first
