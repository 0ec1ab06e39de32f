"""Random pruning: scopes (global, uniform per layer, ERK), start dense vs init, unchanged default identity
and masks, and a tiny end-to-end run showing where each start's weights come from."""

from __future__ import annotations

import math

import pytest
import torch

import mtlprune.methods.random_pruning  # noqa: F401  (registers "random")
from mtlprune.engine.build import build_model, load_state
from mtlprune.engine.context import MethodContext
from mtlprune.engine.sparsity import erk_densities, select_masks
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.random_pruning import RandomPruning
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

TARGET = 0.7


def _cell(params: dict | None = None, target: float = TARGET):
    matrix = tiny_matrix(methods=[{"name": "random", "params": params or {}}], sparsities=[target])
    return matrix, matrix.expand()[0]


def _run_without_data(params: dict | None = None):
    """Run the method on a real tiny model with training replaced by a recorder (no data needed)."""
    matrix, cell = _cell(params)
    torch.manual_seed(0)
    ctx = MethodContext(model=build_model(cell), spec=cell, train_set=None, device=torch.device("cpu"))
    calls = []
    ctx.train = lambda spec=None, *, phase="train", **kw: calls.append((spec or cell.finetune, phase)) or 0
    method = RandomPruning(cell.method.parsed_params())
    method.run(ctx)
    return matrix, cell, ctx, method, calls


def _pruned(masks) -> dict[str, int]:
    return {n: int((~m).sum()) for n, m in masks.items()}


def test_erk_scope_prunes_each_layer_to_its_erk_density_rounded_with_an_exact_total():
    _, _, ctx, _, _ = _run_without_data({"scope": "erk"})
    params = ctx.prunable()
    densities = erk_densities({n: tuple(p.shape) for n, p in params.items()}, TARGET)
    pruned = _pruned(ctx.masks)
    total = sum(p.numel() for p in params.values())
    assert sum(pruned.values()) == round(TARGET * total)  # exact total
    for name, p in params.items():
        exact = (1.0 - densities[name]) * p.numel()
        assert pruned[name] in (math.floor(exact), math.ceil(exact)), name  # the formula, rounded
        assert torch.all(p.detach()[~ctx.masks[name]] == 0)
    # ERK is not uniform: small layers keep more (some are dense), large ones less.
    assert len({round(pruned[n] / params[n].numel(), 2) for n in params}) > 2


def test_layer_scope_prunes_every_layer_exactly_to_the_target():
    _, _, ctx, _, _ = _run_without_data({"scope": "layer"})
    for name, p in ctx.prunable().items():
        assert _pruned(ctx.masks)[name] == round(TARGET * p.numel()), name


def test_default_params_keep_the_previous_masks_and_finetune():
    matrix, cell, ctx, method, calls = _run_without_data()
    assert method.starts_from == "dense" and cell.method.params == {}
    # The recipe before scope "erk" and start existed: uniform scores from ctx.generator(), one global cut.
    generator = ctx.generator()
    scores = {n: torch.rand(p.shape, generator=generator) for n, p in ctx.prunable().items()}
    expected = select_masks(scores, TARGET, "global")
    assert all(torch.equal(ctx.masks[n], expected[n]) for n in expected)
    assert calls == [(matrix.finetune, "finetune")]


def test_start_init_trains_on_the_at_init_budget():
    matrix, _, _, method, calls = _run_without_data({"start": "init"})
    assert method.starts_from == "init" and RandomPruning.starts_from == "dense"
    ((spec, phase),) = calls
    assert phase == "train" and spec.steps == matrix.train.steps + matrix.finetune.steps == 8
    assert spec.model_copy(update={"steps": matrix.train.steps}) == matrix.train  # the dense recipe


def test_default_params_keep_the_run_id():
    # Params equal to their defaults are dropped from the spec, so the identity of existing results holds.
    _, plain = _cell(target=0.5)
    _, spelled = _cell({"scope": "global", "start": "dense"}, target=0.5)
    assert plain.run_id == spelled.run_id == "e29b2dd407e6a45c"  # tiny_matrix random@0.5, pinned (schema 2)
    assert _cell({"scope": "layer"}, target=0.5)[1].run_id == "041fb2319a003c49"  # also the id before
    assert spelled.method.label == "random"
    assert _cell({"start": "init"}, target=0.5)[1].run_id not in {plain.run_id, "041fb2319a003c49"}
    assert _cell({"scope": "erk", "start": "init"})[1].method.label == "random(scope=erk,start=init)"


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """random (default) and random(scope=erk, start=init), recording the weights each starts training from."""
    matrix = tiny_matrix(
        methods=[{"name": "random"}, {"name": "random", "params": {"scope": "erk", "start": "init"}}],
        sparsities=[TARGET],
    )
    store = Store(tmp_path_factory.mktemp("random"))
    starts: dict[str, dict[str, torch.Tensor]] = {}
    original = MethodContext.train

    def recording_train(self, spec=None, **kwargs):
        starts[self.spec.run_id] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return original(self, spec, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodContext, "train", recording_train)
        outcome = run_matrix(matrix, store, show_progress=False)
    dense, at_init = matrix.expand()
    return matrix, store, outcome, dense, at_init, starts


@pytest.mark.slow
def test_each_start_trains_from_its_own_snapshot_and_budget(tiny_runs):
    matrix, store, outcome, dense, at_init, starts = tiny_runs
    assert outcome.failed == {}
    dense_dir = store.run_dir(matrix.dense_stages()[0].run_id)
    both = matrix.train.steps + matrix.finetune.steps
    cases = ((dense, "model.pt", matrix.finetune.steps), (at_init, "init.pt", both))
    for cell, snapshot, steps_method in cases:
        result = store.result(cell.run_id)
        assert result.steps_total == both == 8 and result.steps_method == steps_method
        assert result.starts_from == ("init" if snapshot == "init.pt" else "dense")
        assert abs(result.sparsity["achieved_sparsity"] - TARGET) <= 1e-3
        masks = load_masks(store.run_dir(cell.run_id))
        expected = load_state(dense_dir / snapshot)
        started = starts[cell.run_id]
        assert started.keys() == expected.keys()
        for key, value in expected.items():
            want = value * masks[key] if key in masks else value  # the snapshot, masked
            assert torch.equal(started[key], want), (snapshot, key)
    init, final = load_state(dense_dir / "init.pt"), load_state(dense_dir / "model.pt")
    assert any(not torch.equal(init[k], final[k]) for k in init)  # the two snapshots really differ


def test_the_context_is_read_only_for_a_method():
    """Masks change through apply_masks (or a training callback) only; the engine's account stays its own."""
    cell = tiny_matrix(sparsities=[0.5]).expand()[0]
    ctx = MethodContext(model=build_model(cell), spec=cell, train_set=None, device=torch.device("cpu"))
    assert ctx.masks is None and ctx.steps_used == 0 and dict(ctx.recorded) == {}
    masks = ctx.select_masks({n: torch.rand(p.shape) for n, p in ctx.prunable().items()})
    ctx.apply_masks(masks)
    assert set(ctx.masks) == set(masks)
    for name, value in (("masks", {}), ("steps_used", 5), ("model", None), ("recorded", {})):
        with pytest.raises(AttributeError):
            setattr(ctx, name, value)
    with pytest.raises(TypeError):
        ctx.masks["x"] = masks[next(iter(masks))]  # the mapping is a read-only view
    ctx.record(threshold=0.5)
    assert dict(ctx.recorded) == {"threshold": 0.5}
