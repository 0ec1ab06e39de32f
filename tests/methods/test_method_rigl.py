"""RigL: the cosine drop schedule, one layer's drop/grow by hand, optimizer-state reset, ERK by hand, and a
tiny end-to-end run (exact per-layer counts kept, masks changing, budget, determinism)."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mtlprune.methods.rigl  # noqa: F401  (registers "rigl")
from mtlprune.engine.build import build_model
from mtlprune.engine.context import MethodContext
from mtlprune.engine.sparsity import apply_masks, erk_densities, select_masks
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.rigl import RigL, RigLCallback, reset_optimizer_state, rigl_drop_fraction, rigl_update
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

# ------------------------------------------------------------------------------------------ (1) schedule


@pytest.mark.parametrize(
    ("step", "alpha", "end_step", "expected"),
    [
        (0, 0.3, 6, 0.3),  # (0.3/2)(1 + cos 0) = 0.3
        (2, 0.3, 6, 0.225),  # (0.15)(1 + cos π/3) = 0.15 · 1.5
        (3, 0.3, 6, 0.15),  # (0.15)(1 + cos π/2) = 0.15
        (4, 0.3, 6, 0.075),  # (0.15)(1 + cos 2π/3) = 0.15 · 0.5
        (6, 0.3, 6, 0.0),  # t_end: the mask is fixed from here on
        (9, 0.3, 6, 0.0),
        (25_000, 0.3, 75_000, 0.225),  # the paper's scale: t/t_end = 1/3
        (100, 0.5, 400, 0.25 * (1 + math.sqrt(0.5))),  # (0.25)(1 + cos π/4) = 0.4267...
    ],
)
def test_drop_fraction_is_the_cosine_schedule(step, alpha, end_step, expected):
    assert rigl_drop_fraction(step, alpha, end_step) == pytest.approx(expected, abs=1e-12)


def test_update_steps_are_every_delta_t_before_t_end():
    callback = RigLCallback(delta_t=2, alpha=0.3, end_step=6)
    assert [t for t in range(10) if callback.is_update_step(t)] == [0, 2, 4]


# ---------------------------------------------------------------------------------- (2) one layer by hand

# A 1×6 layer: 4 active weights (0, 1, 4, 5), 2 inactive ones (exactly zero).
W = torch.tensor([[0.5, -0.1, 0.0, 0.0, 0.3, -0.05]])
MASK = torch.tensor([[True, True, False, False, True, True]])
G = torch.tensor([[0.2, -0.9, 0.4, 0.1, 0.0, -0.3]])  # |g| = 0.2 0.9 0.4 0.1 0.0 0.3


def _indices(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.flatten()).flatten().tolist()


def test_rigl_update_excluding_the_dropped_weights():
    # n = 2: drop the two smallest active |w|: index 5 (0.05) and index 1 (0.1) → kept {0, 4}.
    # Grow among the weights inactive before the update, {2, 3}, by |g|: 2 (0.4), 3 (0.1).
    # Index 1 has the largest |g| of all but was just dropped, so it is not regrown.
    new = rigl_update(W, G, MASK, 2, regrow_dropped=False)
    assert new.shape == MASK.shape and new.dtype == torch.bool
    assert _indices(new) == [0, 2, 3, 4]
    assert int(new.sum()) == int(MASK.sum()) == 4
    # n larger than the inactive count is capped at it (2): the same update.
    assert _indices(rigl_update(W, G, MASK, 3, regrow_dropped=False)) == [0, 2, 3, 4]


def test_rigl_update_official_rule_lets_a_dropped_weight_come_back():
    # Same drop ({5, 1}); candidates are everything not kept: {1, 2, 3, 5} with |g| 0.9, 0.4, 0.1, 0.3
    # → grow 1 and 2. Index 1 is dropped and regrown in the same update (it keeps its value).
    new = rigl_update(W, G, MASK, 2)
    assert _indices(new) == [0, 1, 2, 4] and int(new.sum()) == 4
    # n = 3 drops 5, 1, 4 (|w| 0.05, 0.1, 0.3) → kept {0}; candidates {1..5}: |g| 0.9, 0.4, 0.1, 0.0, 0.3
    # → grow 1, 2, 5.
    assert _indices(rigl_update(W, G, MASK, 3)) == [0, 1, 2, 5]
    # n = 0 changes nothing.
    assert torch.equal(rigl_update(W, G, MASK, 0), MASK)


def test_rigl_update_never_grows_an_inactive_weight_with_zero_gradient():
    # Layer [0.5, 0.1, 0, 0] with mask [T, T, F, F] and |g| = [0.3, 0.2, 0.6, 0.0]; n = 2.
    # Drop {1 (0.1), 0 (0.5)}. Growable: inactive with |g| > 0 = {2}; index 3 (|g| = 0) would stay zero.
    # Official rule: candidates {2} ∪ dropped {0, 1}: grow 2 (0.6) and 0 (0.3) → {0, 2}; index 1 stays out.
    w = torch.tensor([0.5, 0.1, 0.0, 0.0])
    mask = torch.tensor([True, True, False, False])
    g = torch.tensor([0.3, 0.2, 0.6, 0.0])
    assert _indices(rigl_update(w, g, mask, 2)) == [0, 2]
    # Without regrowing dropped weights one connection is growable, so one is swapped: drop 1, grow 2.
    assert _indices(rigl_update(w, g, mask, 2, regrow_dropped=False)) == [0, 2]
    # With no growable connection at all nothing changes.
    assert torch.equal(
        rigl_update(w, torch.tensor([0.3, 0.2, 0.0, 0.0]), mask, 2, regrow_dropped=False), mask
    )


def test_rigl_update_breaks_ties_by_position():
    w = torch.tensor([0.2, 0.2, 0.0, 0.0, 0.2])
    mask = torch.tensor([True, True, False, False, True])
    g = torch.tensor([0.0, 0.0, 0.7, 0.7, 0.0])
    # Equal |w|: index 0 is dropped first; equal |g|: index 2 is grown first.
    assert _indices(rigl_update(w, g, mask, 1, regrow_dropped=False)) == [1, 2, 4]


def _fake_runner(regrow_dropped: bool):
    """What the callback touches of a StepRunner: params, masks, optimizer, set_masks."""
    param = nn.Parameter(torch.ones(1, 6))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.full((1, 6), 0.5)
    optimizer.step()  # every entry now has non-zero Adam moments
    with torch.no_grad():
        param.copy_(W)
    param.grad = G.clone()
    runner = SimpleNamespace(params={"w": param}, masks={"w": MASK.clone()}, optimizer=optimizer, calls=[])

    def set_masks(masks):
        runner.calls.append(masks)
        apply_masks(runner.params, masks)
        runner.masks = {n: m.clone() for n, m in masks.items()}

    runner.set_masks = set_masks
    callback = RigLCallback(delta_t=1, alpha=0.5, end_step=10, regrow_dropped=regrow_dropped)
    return runner, callback


@pytest.mark.parametrize(
    ("regrow_dropped", "kept", "grown"), [(False, [0, 2, 3, 4], [2, 3]), (True, [0, 1, 2, 4], [2])]
)
def test_callback_zeroes_the_adam_state_of_regrown_connections_only(regrow_dropped, kept, grown):
    runner, callback = _fake_runner(regrow_dropped)
    param = runner.params["w"]
    state = runner.optimizer.state[param]
    before = {k: v.clone() for k, v in state.items()}
    callback.after_backward(0, runner)  # f(0) = α = 0.5 → n = ⌊0.5 · 4⌋ = 2, the hand example above
    assert len(runner.calls) == 1 and _indices(runner.masks["w"]) == kept
    for key in ("exp_avg", "exp_avg_sq"):
        for i in range(6):
            if i in grown:
                assert state[key][0, i] == 0.0
            else:
                assert state[key][0, i] == before[key][0, i] != 0.0
    assert torch.equal(state["step"], before["step"])  # the per-tensor step count is untouched
    # Regrown weights are zero; a weight dropped and regrown keeps its value; dropped ones are zeroed.
    expected = W.clone() * torch.zeros(1, 6).index_fill_(1, torch.tensor(kept), 1.0)
    assert torch.equal(param.detach(), expected)
    assert callback.after_step(0, runner) == {"rigl.drop_fraction": 0.5, "rigl.changed": float(len(grown))}
    assert callback.after_step(1, runner) is None
    callback.after_backward(1, runner)
    assert len(runner.calls) == 2  # delta_t = 1: every step until t_end updates


def test_reset_optimizer_state_without_state_and_with_sgd_momentum():
    param = nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    assert reset_optimizer_state(sgd, param, torch.tensor([True, False, False])) == 0  # no state yet
    param.grad = torch.ones(3)
    sgd.step()
    assert reset_optimizer_state(sgd, param, torch.tensor([True, False, True])) == 1
    assert sgd.state[param]["momentum_buffer"].tolist() == [0.0, 1.0, 0.0]


# -------------------------------------------------------------------------------------- (4) ERK by hand


def test_erk_densities_by_hand_with_a_capped_layer():
    shapes = {"a": (4, 2, 3, 3), "b": (64, 64, 3, 3), "c": (32, 64, 3, 3)}
    # sizes 72, 36864, 18432 (N = 55368); Σ dims 12, 134, 102. Target 0.5 → keep 27684.
    # First ε = 27684 / (12 + 134 + 102) = 111.63: layer a would get 111.63 · 12/72 = 18.6 > 1 → dense.
    # Again over b, c: ε = (27684 − 72) / (134 + 102) = 27612 / 236 = 117 exactly.
    # b: 117 · 134 / 36864 = 15678/36864;  c: 117 · 102 / 18432 = 11934/18432.
    densities = erk_densities(shapes, 0.5)
    assert densities["a"] == 1.0
    assert densities["b"] == pytest.approx(15678 / 36864, abs=1e-12)
    assert densities["c"] == pytest.approx(11934 / 18432, abs=1e-12)
    for name in ("b", "c"):  # the same ε for every uncapped layer
        assert densities[name] * math.prod(shapes[name]) / sum(shapes[name]) == pytest.approx(117.0)
    # The exact-count random ERK mask: pruned 0, 36864 − 15678 = 21186, 18432 − 11934 = 6498 (Σ 27684).
    gen = torch.Generator().manual_seed(0)
    masks = select_masks({n: torch.rand(s, generator=gen) for n, s in shapes.items()}, 0.5, "erk")
    assert {n: int((~m).sum()) for n, m in masks.items()} == {"a": 0, "b": 21186, "c": 6498}


# --------------------------------------------------------------------------------- (3) tiny end to end


@pytest.fixture(scope="module")
def tiny_rigl(tmp_path_factory):
    matrix = tiny_matrix(
        methods=[{"name": "rigl", "params": {"delta_t": 2}}],
        sparsities=[0.7],
        runtime={"device": "cpu", "log_every": 1},
    )
    store = Store(tmp_path_factory.mktemp("rigl"))
    outcome = run_matrix(matrix, store, show_progress=False)
    (cell,) = matrix.expand()
    return matrix, store, outcome, cell


def _initial_masks(cell) -> dict[str, torch.Tensor]:
    model = build_model(cell)
    ctx = MethodContext(model=model, spec=cell, train_set=None, device=torch.device("cpu"))
    return RigL(cell.method.parsed_params()).initial_masks(ctx)


@pytest.mark.slow
def test_tiny_run_keeps_the_exact_erk_layer_counts_and_the_target(tiny_rigl):
    _, store, outcome, cell = tiny_rigl
    assert outcome.failed == {}
    result = store.result(cell.run_id)
    assert abs(result.sparsity["achieved_sparsity"] - 0.7) <= 1e-3  # counted from the weights
    final = load_masks(store.run_dir(cell.run_id))
    initial = _initial_masks(cell)
    assert set(final) == set(initial)
    total = sum(m.numel() for m in final.values())
    assert sum(int((~m).sum()) for m in final.values()) == round(0.7 * total)
    for name, mask in final.items():
        assert int(mask.sum()) == int(initial[name].sum()), name  # per-layer density never moves
        zeros = result.sparsity["layers"][name]["zeros"]
        assert zeros >= int((~mask).sum())  # every pruned weight is exactly zero
    # ERK, not uniform: layer densities differ across layers.
    densities = {round(float(m.float().mean()), 3) for m in final.values()}
    assert len(densities) > 2
    # The topology moved during training.
    assert any(not torch.equal(final[n], initial[n]) for n in final)


@pytest.mark.slow
def test_tiny_run_logs_each_update_and_spends_the_at_init_budget(tiny_rigl):
    matrix, store, _, cell = tiny_rigl
    log = store.run_dir(cell.run_id) / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    updates = [r for r in records if "rigl.drop_fraction" in r]
    # T = 6 + 2 = 8 steps, t_end = ⌊0.75 · 8⌋ = 6, delta_t = 2 → updates at 0, 2, 4;
    # f = 0.3, 0.225, 0.075 (the schedule above).
    assert [r["step"] for r in updates] == [0, 2, 4]
    assert [r["rigl.drop_fraction"] for r in updates] == pytest.approx([0.3, 0.225, 0.075])
    assert sum(r["rigl.changed"] for r in updates) > 0
    (summary,) = [r for r in records if "rigl.updates" in r]
    assert summary["rigl.updates"] == 3
    assert summary["rigl.changed_total"] == sum(r["rigl.changed"] for r in updates)
    result = store.result(cell.run_id)
    assert result.steps_total == matrix.train.steps + matrix.finetune.steps == 8
    assert result.steps_method == 8 and result.starts_from == "init"


@pytest.mark.slow
def test_same_seed_gives_identical_masks(tiny_rigl, tmp_path):
    matrix, store, _, cell = tiny_rigl
    copy = Store(tmp_path / "copy")
    shutil.copytree(store.root, copy.root)
    shutil.rmtree(copy.run_dir(cell.run_id))  # keep the dense stage and data; redo only the cell
    outcome = run_matrix(matrix, copy, show_progress=False)
    assert outcome.done == [cell.run_id] and outcome.failed == {}
    first = load_masks(store.run_dir(cell.run_id))
    second = load_masks(copy.run_dir(cell.run_id))
    assert set(first) == set(second) and all(torch.equal(first[n], second[n]) for n in first)
    assert store.result(cell.run_id).metrics == copy.result(cell.run_id).metrics
