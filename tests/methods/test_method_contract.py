"""The plugin contract, checked for every registered method (built-in and any loaded plugin).

One tiny matrix runs every method at 70% sparsity (and the control row at 0), twice in two stores, the
second time each cell after a different predecessor and different draws from the global RNGs; each method
must then:
- reach the target, counted from its final weights (the masked tensors: ECS's deltas), within its declared
  ``sparsity_tolerance``;
- leave every pruned weight exactly zero, with stored masks that match the weights;
- give identical masks and metrics for the same seed, whatever ran before it in the process;
- record every optimizer step it took in ``steps_total`` (dense share included where it starts from dense,
  and the steps of any stage it asked for, such as ECS's single-task base), exactly as many as
  ``planned_steps`` (what ``mtlprune plan`` prices) says;
- evaluate and land in ``load_results()`` with finite metrics and ΔT;
- killed in the middle of its training, resume from its checkpoint to exactly the same end (its callbacks'
  state must be in their ``state_dict``; bench/engine/checkpoint.py).
Methods declare small ``contract_params`` for this run (fewer rounds, shorter intervals).

The documented example plugins (tests/plugins/taylor_example.py and rounds_example.py, printed in
docs/adding_a_method.md) run too. A
plugin author runs this suite on their own method alone (module names or .py paths, comma-separated) with
``MTLPRUNE_CONTRACT_PLUGINS=my_method.py python -m pytest tests/methods/test_method_contract.py``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil

import numpy as np
import pytest
import torch

from mtlprune.analysis import load_results
from mtlprune.engine.requirements import planned_stages
from mtlprune.engine.runner import run_stage
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import Stage, plan
from mtlprune.registry import METHODS, load_plugins
from mtlprune.store import Store
from tests.engine.test_resume import Killed, _fingerprint, _kill_at
from tests.helpers import cells_of, dense_of, load_masks, tiny_matrix

pytestmark = pytest.mark.slow  # every test here trains stages end to end

EXTRA = [m for m in os.environ.get("MTLPRUNE_CONTRACT_PLUGINS", "").split(",") if m]
load_plugins()
BUILTIN = set(METHODS.names())
load_plugins(EXTRA or ["tests.plugins.taylor_example", "tests.plugins.rounds_example"])
# With MTLPRUNE_CONTRACT_PLUGINS only the methods those plugins register run (the plugin author's fast loop);
# without it every built-in method and the documented example plugin do.
NAMES = sorted(set(METHODS.names()) - BUILTIN) if EXTRA else sorted(METHODS.names())
CONTROLS = [n for n in NAMES if METHODS.get(n).control]  # planned by the matrix, never listed as methods
TARGET = 0.7


def _matrix():
    methods = [
        {"name": n, "params": dict(METHODS.get(n).contract_params)} for n in NAMES if n not in CONTROLS
    ]
    return tiny_matrix(
        methods=methods,
        sparsities=[TARGET],
        controls=True,
        runtime={"device": "cpu", "log_every": 1, "save_cell_models": True, "checkpoint_every": 2},
    )


def _rng_noise(n: int) -> None:
    """Draw from every global RNG, as earlier work in a worker process would have."""
    torch.rand(n), np.random.rand(n), [random.random() for _ in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The matrix on two stores: in plan order, then each cell after a different predecessor (reversed
    order) and different draws from the global RNGs, so no method's result can depend on what ran before."""
    matrix = _matrix()
    stores = [Store(tmp_path_factory.mktemp(f"contract{i}")) for i in range(2)]
    outcome = run_matrix(matrix, stores[0], show_progress=False)
    assert outcome.failed == {}, {k: stores[0].status_record(k).error for k in outcome.failed}
    stages = plan(matrix)
    for dense in dense_of(stages):  # the shared dense stage, and any a method asks for (ECS's base)
        assert run_stage(dense, stores[1], matrix.runtime).status == "done"
    for i, cell in enumerate(reversed(cells_of(stages))):
        _rng_noise(i + 1)
        outcome = run_stage(cell, stores[1], matrix.runtime)
        assert outcome.status == "done", (cell.spec.method.name, outcome.error)
    cells = {c.method.name: c for c in matrix.expand()}
    return matrix, stores, cells


def _load(store, run_id, name):
    return torch.load(store.run_dir(run_id) / name, map_location="cpu", weights_only=True)


def test_every_method_is_covered(runs):
    _, _, cells = runs
    if EXTRA:  # the named plugins' methods alone (and the control row the matrix adds for them)
        assert NAMES and set(NAMES) <= set(cells) and not set(NAMES) & BUILTIN
    else:
        assert set(cells) == set(NAMES) and {
            "magnitude",
            "random",
            "taylor-example",
            "rounds-example",
        } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_achieved_sparsity_from_the_weights_meets_the_target(runs, name):
    _, (store, _), cells = runs
    cell = cells[name]
    model = _load(store, cell.run_id, "model.pt")
    masks = load_masks(store.run_dir(cell.run_id)) if name not in CONTROLS else {}
    prunable = masks or store.result(cell.run_id).sparsity["layers"]  # a control stores no masks
    zeros = sum(int((model[n] == 0).sum()) for n in prunable)
    total = sum(model[n].numel() for n in prunable)
    tolerance = METHODS.get(name).sparsity_tolerance
    assert abs(zeros / total - cell.target_sparsity) <= tolerance
    assert store.result(cell.run_id).sparsity["achieved_sparsity"] == pytest.approx(zeros / total)


@pytest.mark.parametrize("name", NAMES)
def test_pruned_weights_are_exactly_zero_and_masks_match(runs, name):
    _, (store, _), cells = runs
    run_id = cells[name].run_id
    if name in CONTROLS:  # nothing pruned, nothing stored
        assert not (store.run_dir(run_id) / "masks.npz").exists()
        return
    model = _load(store, run_id, "model.pt")
    masks = load_masks(store.run_dir(run_id))
    for param, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == model[param].shape, param
        assert torch.all(model[param][~mask] == 0), f"{name}: pruned weights of {param} are non-zero"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_masks_and_metrics(runs, name):
    _, (first, second), cells = runs
    run_id = cells[name].run_id
    if name not in CONTROLS:
        a, b = load_masks(first.run_dir(run_id)), load_masks(second.run_dir(run_id))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.result(run_id).metrics == second.result(run_id).metrics


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_step_is_counted(runs, name):
    matrix, (store, _), cells = runs
    result = store.result(cells[name].run_id)
    records = [json.loads(line) for line in (store.run_dir(cells[name].run_id) / "log.jsonl").open()]
    trained = [r for r in records if "step" in r and "loss" in r]  # one record per optimizer step
    assert result.steps_method == len(trained) > 0
    dense_share = matrix.train.steps if result.starts_from == "dense" else 0
    dense_share += sum(d.train.steps for d in cells[name].extra_stages())  # stages the method asked for
    assert result.steps_total == dense_share + result.steps_method


@pytest.mark.parametrize("name", NAMES)
def test_planned_steps_are_what_the_cell_records(runs, name):
    """`mtlprune plan` prices a cell with ``planned_steps``: it must be exactly what the method spends."""
    matrix, (store, _), cells = runs
    (planned,) = [p for p in planned_stages(plan(matrix)) if p.run_id == cells[name].run_id]
    result = store.result(planned.run_id)
    assert (result.steps_method, result.steps_total) == (planned.steps, planned.steps_total)
    assert result.starts_from == planned.starts_from


def test_every_method_lands_in_load_results(runs):
    _, (store, _), cells = runs
    frame = load_results(store.root).set_index("method_name")
    for name in NAMES:
        row = frame.loc[name]
        assert row["status"] == "done" and row["run_id"] == cells[name].run_id
        assert row["target_sparsity"] == (0.0 if name in CONTROLS else TARGET)
        assert math.isfinite(row["segment_semantic.pixel_acc"]) and math.isfinite(
            row["depth_zbuffer.abs_err"]
        )


@pytest.mark.parametrize("name", NAMES)
def test_a_cell_killed_mid_training_resumes_to_the_same_end(runs, name, tmp_path):
    matrix, (store, _), cells = runs
    cell = cells[name]
    records = [json.loads(line) for line in (store.run_dir(cell.run_id) / "log.jsonl").open()]
    steps = sum(1 for r in records if "step" in r)
    resumed = Store(tmp_path)
    for dense_id in Stage(cell).requires:  # its dense stage and any its method asked for
        shutil.copytree(store.run_dir(dense_id), resumed.run_dir(dense_id))
    shutil.copytree(store.root / "data", resumed.root / "data")
    progress, _ = _kill_at(max(1, steps // 2 + 1))
    with pytest.raises(Killed):
        run_stage(Stage(cell), resumed, matrix.runtime, progress)
    _rng_noise(5)  # the resuming process has a history of its own
    outcome = run_stage(Stage(cell), resumed, matrix.runtime)
    assert outcome.status == "done", outcome.error
    assert _fingerprint(resumed, cell.run_id) == _fingerprint(store, cell.run_id)
