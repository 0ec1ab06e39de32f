"""`mtlprune plan` estimates a matrix's cost from the stage times measured in the store."""

from __future__ import annotations

import json

import pytest
import yaml

from mtlprune.cli import main
from mtlprune.engine.runner import run_stage
from mtlprune.plan.stages import plan
from mtlprune.store import Store
from tests.helpers import tiny_matrix, tiny_matrix_dict


@pytest.mark.slow
def test_plan_estimates_new_cells_from_measured_stage_times(tmp_path, capsys):
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5])
    store = Store(tmp_path / "store")
    for stage in plan(matrix):
        assert run_stage(stage, store, matrix.runtime).status == "done"
    measured = [store.result(s.run_id).wall_s for s in plan(matrix)]
    # the same matrix plus a sparsity level and a seed: 1 new cell at seed 0, a dense stage and 2 cells at 1
    config = tmp_path / "extended.yaml"
    config.write_text(
        yaml.safe_dump(tiny_matrix_dict(methods=[{"name": "magnitude"}], sparsities=[0.5, 0.9], seeds=[0, 1]))
    )
    assert main(["plan", str(config), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    dense_s, cell_s = measured
    expected = dense_s + 3 * cell_s
    line = next(line.strip() for line in out.splitlines() if "estimate:" in line)
    assert line.startswith("estimate: 4 pending stage(s) ≈ ")
    assert "without a measurement" not in line  # every pending stage has a same-key measurement
    from mtlprune.plan.estimate import estimate_costs

    extended = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5, 0.9], seeds=[0, 1])
    estimate = estimate_costs(store.root, plan(extended))
    assert estimate.done == 2 and estimate.pending == 4
    assert abs(estimate.pending_s - expected) < 1e-9


def test_cost_keys_separate_methods_and_budgets():
    matrix = tiny_matrix(sparsities=[0.5])
    stages = plan(matrix)
    assert [s.kind for s in stages] == ["dense", "cell", "cell"]
    dense, random_cell, magnitude_cell = stages
    assert dense.cost_key == ("nyuv2", "deeplab_resnet34", 0.125, 0.03125, 6)  # + head width, train steps
    assert random_cell.cost_key == ("nyuv2", "deeplab_resnet34", 0.125, "random", 6, 2)  # + finetune steps
    assert random_cell.cost_key != magnitude_cell.cost_key  # the method label is part of the key
    assert json.dumps([list(s.cost_key) for s in stages])  # plain values only
