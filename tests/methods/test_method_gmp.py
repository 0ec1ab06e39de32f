"""Gradual magnitude pruning: the cubic schedule against its closed form, and one tiny cell end to end."""

from __future__ import annotations

import itertools
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

import mtlprune.methods.gmp  # noqa: F401  (registers "gmp")
from mtlprune.engine.sparsity import select_masks
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.gmp import GMP, GMPCallback, GMPParams, gmp_pruning_steps, gmp_sparsity, gmp_steps
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

# ------------------------------------------------------------------------------------------ schedule


def closed_form(t: int, s_f: float, t0: int, t_end: int, s_i: float = 0.0) -> float:
    return s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3


@pytest.mark.parametrize(
    ("step", "initial", "expected"),
    [
        (400, 0.0, 0.7875),  # 0.9 + (0 − 0.9)·(1 − 300/600)³ = 0.9 − 0.9·0.125
        (250, 0.0, 0.5203125),  # 0.9 − 0.9·0.75³ = 0.9 − 0.9·0.421875
        (550, 0.0, 0.8859375),  # 0.9 − 0.9·0.25³ = 0.9 − 0.9·0.015625
        (100, 0.0, 0.0),  # at t0: s_i
        (400, 0.2, 0.8125),  # 0.9 + (0.2 − 0.9)·0.125 = 0.9 − 0.0875
        (100, 0.2, 0.2),
    ],
)
def test_gmp_sparsity_hand_computed(step, initial, expected):
    assert gmp_sparsity(step, 0.9, 100, 700, initial) == pytest.approx(expected, abs=1e-12)


def test_gmp_sparsity_matches_closed_form_and_is_monotone():
    values = [gmp_sparsity(t, 0.9, 100, 700, 0.1) for t in range(0, 1001)]
    for t in range(100, 700, 37):
        assert values[t] == pytest.approx(closed_form(t, 0.9, 100, 700, 0.1), abs=1e-12)
    assert all(v == 0.1 for v in values[:101])  # s_i before and at t0 (clamped: no ulp below s_i)
    assert all(v == 0.9 for v in values[700:])  # s_f at and after t_end
    assert all(b >= a for a, b in itertools.pairwise(values))
    # t0 == t_end: the whole schedule is one step to the target.
    assert gmp_sparsity(4, 0.8, 5, 5) == 0.0 and gmp_sparsity(5, 0.8, 5, 5) == 0.8


def test_pruning_steps_always_end_at_t_end():
    assert gmp_steps(16, 0.125, 0.75) == (2, 12)  # round(2.0), round(12.0)
    assert gmp_steps(16, 0.125, 1.0) == (2, 15)  # t_end clamped to the last step index
    assert gmp_steps(1, 0.5, 1.0) == (0, 0)
    assert gmp_pruning_steps(2, 12, 3) == [2, 5, 8, 11, 12]  # 10 is not a multiple of 3
    assert gmp_pruning_steps(2, 12, 5) == [2, 7, 12]  # a multiple: no duplicate
    assert gmp_pruning_steps(2, 12, 100) == [2, 12]  # t_end − t0 < frequency
    assert gmp_pruning_steps(7, 7, 100) == [7]


@pytest.mark.parametrize(
    "params",
    [
        {"start": 0.5, "end": 0.5},
        {"start": 0.8, "end": 0.3},
        {"frequency": 0},
        {"initial_sparsity": 1.0},
        {"end": 1.5},
        {"scope": "block"},
        {"stat": 0.1},
    ],
)
def test_invalid_params_are_rejected(params):
    with pytest.raises(ValidationError):
        GMPParams.model_validate(params)


def test_defaults_are_the_papers():
    p = GMPParams()
    assert (p.start, p.end, p.frequency, p.initial_sparsity, p.scope) == (0.125, 0.75, 100, 0.0, "layer")
    assert GMP.starts_from == "init"


# ----------------------------------------------------------------- final target under best-val selection


def _fake_ctx(weights: dict[str, torch.Tensor], masks, target: float):
    logged: list[dict] = []
    ctx = SimpleNamespace(target=target, masks=masks, logged=logged)
    ctx.prunable = lambda: weights
    ctx.log = lambda **s: logged.append(s)

    def apply(m):
        for n, k in m.items():
            weights[n].mul_(k)
        ctx.masks = m

    ctx.apply_masks = apply
    return ctx


def _select_layer(scores, target, current):
    return select_masks(scores, target, "layer", current=current)


def test_ensure_target_prunes_survivors_only_when_short_of_the_target():
    w = {"a": torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2, 6.0, 0.05, 1.0])}
    early = {"a": torch.tensor([True, True, True, True, True, True, False, True])}  # 1/8 pruned
    ctx = _fake_ctx({"a": w["a"] * early["a"]}, early, 0.5)
    GMP._ensure_target(ctx, _select_layer, grow_only=False)
    # Survivors by |w|: 0.1, 0.2, 0.3 are the three lowest: with the pruned 0.05 that is 4 of 8.
    assert ctx.masks["a"].tolist() == [False, True, False, True, False, True, False, True]
    assert ctx.prunable()["a"].tolist() == [0.0, -5.0, 0.0, 4.0, -0.0, 6.0, 0.0, 1.0]
    assert ctx.logged == [{"gmp.final_prune": 1, "gmp.achieved": 0.5}]
    # Already at the target (the default "last" selection): nothing changes, nothing is logged.
    ctx.logged.clear()
    before = ctx.masks
    GMP._ensure_target(ctx, _select_layer, grow_only=False)
    assert ctx.masks is before and ctx.logged == []


def test_callback_prunes_only_on_pruning_steps_and_masks_only_grow():
    weights = {"w": torch.nn.Parameter(torch.arange(1.0, 11.0))}  # |w| = 1..10
    runner = SimpleNamespace(params=weights, masks=None)

    def set_masks(m):
        runner.masks = {n: k.clone() for n, k in m.items()}
        with torch.no_grad():
            for n, k in m.items():
                weights[n].mul_(k)

    runner.set_masks = set_masks
    cb = GMPCallback(_select_layer, lambda t: gmp_sparsity(t, 0.6, 0, 4), [0, 2, 4])
    assert cb.after_step(0, runner) == {"gmp.sparsity": 0.0, "gmp.achieved": 0.0} and runner.masks is None
    assert cb.after_step(1, runner) is None
    # Step 2: 0.6 − 0.6·0.5³ = 0.525 → round(5.25) = 5 pruned: the five smallest.
    assert cb.after_step(2, runner) == {"gmp.sparsity": pytest.approx(0.525), "gmp.achieved": 0.5}
    assert runner.masks["w"].tolist() == [False] * 5 + [True] * 5
    # The survivors' magnitudes change: a pruned weight never comes back, the smallest survivor goes.
    with torch.no_grad():
        weights["w"].copy_(torch.tensor([9.0, 9, 9, 9, 9, 0.5, 7, 8, 9, 10]) * runner.masks["w"])
    assert cb.after_step(4, runner) == {"gmp.sparsity": 0.6, "gmp.achieved": 0.6}
    assert runner.masks["w"].tolist() == [False] * 6 + [True] * 4


# ---------------------------------------------------------------------------- one tiny cell end to end

PARAMS = {"start": 0.125, "end": 0.75, "frequency": 2}  # T = 6 + 2 = 8: t0 = 1, t_end = 6
TARGET = 0.5
PRUNING_STEPS = [1, 3, 5, 6]  # t_end − t0 = 5 is not a multiple of 2: the last interval is shorter
# 0.5 − 0.5·(1 − (t − 1)/5)³: t=3 → 0.5·(1 − 0.6³) = 0.5·0.784, t=5 → 0.5·(1 − 0.2³) = 0.5·0.992
SCHEDULE = [0.0, 0.392, 0.496, 0.5]


def _matrix():
    return tiny_matrix(
        methods=[{"name": "gmp", "params": PARAMS}],
        sparsities=[TARGET],
        runtime={"device": "cpu", "log_every": 1},
    )


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """The gmp cell run twice on the same dense stage, with the masks recorded at every pruning step."""
    matrix = _matrix()
    store = Store(tmp_path_factory.mktemp("gmp_a"))
    snapshots: list[dict] = []
    original = GMPCallback.after_step

    def recording(self, step, runner):
        before = None if runner.masks is None else dict(runner.masks)
        out = original(self, step, runner)
        if out is not None:
            leaked = 0
            if before is not None:  # weights pruned earlier stayed zero through the steps in between
                leaked = sum(int((runner.params[n].detach()[~m] != 0).sum()) for n, m in before.items())
            masks = None if runner.masks is None else {n: m.clone() for n, m in runner.masks.items()}
            snapshots.append({"step": step, "masks": masks, "leaked": leaked})
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GMPCallback, "after_step", recording)
        outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}
    # The same seed again, on a copy of the same dense stage (no need to retrain it).
    store_b = Store(tmp_path_factory.mktemp("gmp_b"))
    dense_id = matrix.dense_stages()[0].run_id
    shutil.copytree(store.run_dir(dense_id), store_b.run_dir(dense_id))
    outcome_b = run_matrix(matrix, store_b, show_progress=False)
    assert outcome_b.failed == {}
    return matrix, store, store_b, snapshots


def _cell_id(matrix):
    (spec,) = matrix.expand()
    return spec.run_id


@pytest.mark.slow
def test_cell_hits_the_target_on_the_full_budget(cell):
    matrix, store, _, _ = cell
    result = store.result(_cell_id(matrix))
    assert abs(result.sparsity["achieved_sparsity"] - TARGET) < 1e-3  # counted from the weights
    assert result.starts_from == "init"
    assert result.steps_total == matrix.train.steps + matrix.finetune.steps == 8
    assert result.steps_method == 8
    masks = load_masks(store.run_dir(_cell_id(matrix)))
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == sum(round(TARGET * m.numel()) for m in masks.values())  # layer scope: per tensor
    assert result.sparsity["prunable_nonzero"] <= sum(int(m.sum()) for m in masks.values())


@pytest.mark.slow
def test_log_shows_the_cubic_schedule_at_the_pruning_steps(cell):
    matrix, store, _, _ = cell
    records = [
        json.loads(x) for x in (store.run_dir(_cell_id(matrix)) / "log.jsonl").read_text().splitlines()
    ]
    events = [r for r in records if "gmp.step" in r]
    assert [r["gmp.step"] for r in events] == PRUNING_STEPS
    assert [r["gmp.sparsity"] for r in events] == pytest.approx(SCHEDULE, abs=1e-12)
    masks = load_masks(store.run_dir(_cell_id(matrix)))
    n_layers, total = len(masks), sum(m.numel() for m in masks.values())
    for event in events:  # each layer at round(s·n): the total within one weight per layer of s
        assert abs(event["gmp.achieved"] - event["gmp.sparsity"]) <= n_layers / total
    achieved = [r["gmp.achieved"] for r in events]
    assert achieved == sorted(achieved) and achieved[0] == 0.0 and achieved[-1] > 0.4999
    # The training step records (log_every = 1) carry the scheduled sparsity on pruning steps only; the
    # callback's own ctx.log events, made during training, carry its phase too but no step.
    steps = {r["step"]: r for r in records if r.get("phase") == "train" and "step" in r}
    assert sorted(steps) == list(range(8))
    assert [s for s, r in steps.items() if "gmp.sparsity" in r] == PRUNING_STEPS
    assert [steps[s]["gmp.sparsity"] for s in PRUNING_STEPS] == pytest.approx(SCHEDULE, abs=1e-12)


@pytest.mark.slow
def test_masks_only_grow_and_stay_fixed_after_t_end(cell):
    matrix, store, _, snapshots = cell
    assert [s["step"] for s in snapshots] == PRUNING_STEPS
    assert snapshots[0]["masks"] is None  # s_i = 0 at t0: nothing pruned yet
    held = [s["masks"] for s in snapshots[1:]]
    for earlier, later in itertools.pairwise(held):
        for name, keep in later.items():
            assert not (keep & ~earlier[name]).any(), f"{name}: a pruned weight came back"
        assert sum(int((~m).sum()) for m in later.values()) > sum(int((~m).sum()) for m in earlier.values())
    assert all(s["leaked"] == 0 for s in snapshots)
    final = load_masks(store.run_dir(_cell_id(matrix)))
    assert all(torch.equal(final[n], held[-1][n]) for n in final)  # unchanged from t_end to T


@pytest.mark.slow
def test_layer_scope_puts_every_layer_at_the_target(cell):
    matrix, store, _, _ = cell
    layers = store.result(_cell_id(matrix)).sparsity["layers"]
    assert len(layers) > 10
    for name, layer in layers.items():
        assert abs(layer["zeros"] - TARGET * layer["params"]) <= 1, name


@pytest.mark.slow
def test_same_seed_gives_identical_masks(cell):
    matrix, store, store_b, _ = cell
    a = load_masks(store.run_dir(_cell_id(matrix)))
    b = load_masks(store_b.run_dir(_cell_id(matrix)))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert store.result(_cell_id(matrix)).metrics == store_b.result(_cell_id(matrix)).metrics
