"""The whole roster on the CPU ViT (vit_t_convnext, ECS's architecture at demo size): every built-in method
prunes Linear and Conv weights of a transformer and lands at its target, so the roster compares on it too.

One tiny matrix (synthetic NYU-v2, 3 tasks, 70% sparsity, the control row included), every method with its
``contract_params``; each cell must finish with no uncounted FLOP op, and each pruning cell must reach the
target counted from its weights within the method's tolerance, leave its pruned weights exactly zero and
report finite metrics and costs.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mtlprune.execution.matrix import run_matrix
from mtlprune.registry import METHODS, load_plugins
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

pytestmark = pytest.mark.slow  # trains a dense stage and one cell per method

load_plugins()
NAMES = sorted(METHODS.names())
CONTROLS = [n for n in NAMES if METHODS.get(n).control]
# Methods whose target is on the prunable set (a pruned MTLModel); a method on another axis (ECS's weight
# deltas, ``sparsity_axis = "delta"``) only has to run here: its own tests check its axis.
PRUNING = [n for n in NAMES if getattr(METHODS.get(n), "sparsity_axis", "prunable") == "prunable"]
TARGET = 0.7
VIT = {"name": "vit_t_convnext", "width": 0.25, "head_width": 0.03125}  # dim 48, E 96/48: ECS's CPU setting


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory):
    methods = [
        {"name": n, "params": dict(METHODS.get(n).contract_params)} for n in NAMES if n not in CONTROLS
    ]
    matrix = tiny_matrix(
        archs=[VIT], methods=methods, sparsities=[TARGET], controls=True,
        runtime={"device": "cpu", "save_cell_models": True},
    )  # fmt: skip
    store = Store(tmp_path_factory.mktemp("vit"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="FLOPs not counted")  # every ViT op has a formula
        outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    return store, {c.method.name: c for c in matrix.expand()}


def test_every_method_ran_on_the_vit(vit_runs):
    _, cells = vit_runs
    assert set(cells) == set(NAMES)
    assert all(c.arch.name == "vit_t_convnext" for c in cells.values())


@pytest.mark.parametrize("name", PRUNING)
def test_vit_cell_lands_at_its_target_with_exact_zeros(vit_runs, name):
    store, cells = vit_runs
    cell = cells[name]
    result = store.result(cell.run_id)
    model = torch.load(store.run_dir(cell.run_id) / "model.pt", map_location="cpu", weights_only=True)
    layers = result.sparsity["layers"]
    # the prunable set is every Linear and Conv2d weight: patch conv, 4 Linears per block (×4 blocks), and
    # per head proj_dec, 2 × (dwconv, pwconv1, pwconv2) and the final conv
    assert len(layers) == 1 + 4 * 4 + 3 * (1 + 2 * 3 + 1)
    assert {"backbone.encoder.0.attn.qkv.weight", "heads.normal.proj_dec.weight"} <= set(layers)
    zeros = sum(int((model[n] == 0).sum()) for n in layers)
    total = sum(model[n].numel() for n in layers)
    target = 0.0 if name in CONTROLS else TARGET
    assert abs(zeros / total - target) <= METHODS.get(name).sparsity_tolerance
    assert result.sparsity["achieved_sparsity"] == pytest.approx(zeros / total)
    if name not in CONTROLS:
        for param, mask in load_masks(store.run_dir(cell.run_id)).items():
            assert torch.all(model[param][~mask] == 0), f"{name}: pruned weights of {param} are non-zero"
    assert all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
    costs = result.costs
    assert 0 < costs["flops_sparse"] <= costs["flops_dense"]
    if name not in CONTROLS:
        assert costs["flops_sparse"] < costs["flops_dense"]
