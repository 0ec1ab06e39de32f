"""Lottery-ticket (``lth``) and iterative magnitude pruning (``imp``): rounds, rewinding, LR replay, budgets.

One tiny matrix (cosine dense schedule, so every step has a distinct LR) runs both methods at 70% with
rate 0.5 (two rounds: 0.5, then 0.7) and 2 steps per round, plus one-round ``imp`` next to ``magnitude``.
``MethodContext.train`` is wrapped to capture the weights and masks at the start and end of every round's
retraining, so rewinding and mask growth are checked against the dense stage's snapshots directly.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch

import mtlprune.methods.magnitude  # noqa: F401  (registers magnitude; importing mtlprune.methods.lottery registers lth, imp)
from mtlprune.engine.build import build_model
from mtlprune.engine.context import MethodContext
from mtlprune.engine.sparsity import select_masks
from mtlprune.engine.train import StepRunner, lr_factor
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.lottery import replay_spec, round_targets
from mtlprune.registry import ARCHS, METHODS
from mtlprune.spec import TrainSpec
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

TARGET = 0.7
ROUND_STEPS = 2
SMALL = {"rate": 0.5, "round_steps": ROUND_STEPS}
LABELS = {
    "lth": {"name": "lth", "params": SMALL},
    "lth_init": {"name": "lth", "params": {**SMALL, "rewind": "init"}},
    "imp": {"name": "imp", "params": SMALL},
    "imp_lrr": {"name": "imp", "params": {**SMALL, "lr_rewind": True}},
    "imp_one": {"name": "imp", "params": {"rate": 0.9}},
    "magnitude": {"name": "magnitude"},
}


def _matrix(keys=tuple(LABELS)):
    return tiny_matrix(
        methods=[LABELS[k] for k in keys],
        sparsities=[TARGET],
        train={"steps": 6, "batch_size": 4, "lr": 0.003, "lr_schedule": "cosine"},
        runtime={"device": "cpu", "log_every": 1, "save_cell_models": True},
    )


def _clone(tensors):
    return {n: t.detach().cpu().clone() for n, t in tensors.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the matrix once, capturing every ctx.train call: (state before, masks, spec, offset, after)."""
    captured: dict[str, list[dict]] = {}
    original = MethodContext.train

    def spy(self, spec=None, **kwargs):
        record = {
            "before": _clone(self.model.state_dict()),
            "masks": _clone(self.masks or {}),
            "spec": spec,
            "offset": kwargs.get("step_offset", 0),
        }
        steps = original(self, spec, **kwargs)
        record["after"] = _clone(self.prunable())
        captured.setdefault(self.spec.run_id, []).append(record)
        return steps

    matrix = _matrix()
    store = Store(tmp_path_factory.mktemp("lottery"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodContext, "train", spy)
        outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, outcome.failed
    cells = dict(zip(LABELS, matrix.expand(), strict=True))
    assert all(cells[k].method.name == LABELS[k]["name"] for k in LABELS)
    dense_dir = store.run_dir(matrix.dense_stages()[0].run_id)
    return matrix, store, cells, captured, dense_dir


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _log(store, run_id):
    lines = (store.run_dir(run_id) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------------------------------ pure parts


def test_round_targets_golden_values():
    targets = round_targets(0.9, 0.2)
    assert len(targets) == 11  # 1 − 0.8^10 = 0.8926 < 0.9 <= 1 − 0.8^11 = 0.9141
    assert targets[:4] == pytest.approx([0.2, 0.36, 0.488, 0.5904], abs=1e-12)
    assert targets[9] == pytest.approx(1 - 0.8**10) and targets[9] < 0.9
    assert targets[-1] == 0.9  # exactly the target
    assert all(a < b for a, b in itertools.pairwise(targets))
    assert round_targets(0.5, 0.5) == [0.5]
    assert round_targets(0.7, 0.5) == [0.5, 0.7]
    assert round_targets(0.36, 0.2) == [0.2, 0.36]  # float 1 − 0.8² = 0.35999… still reaches 0.36 in 2
    assert [len(round_targets(t, 0.2)) for t in (0.95, 0.98)] == [
        14,
        18,
    ]  # 20% of the remaining weights per round
    assert round_targets(0.7, 0.9) == [0.7]  # one round: one-shot pruning
    with pytest.raises(ValueError, match="rate"):
        round_targets(0.5, 1.0)
    with pytest.raises(ValueError, match="target"):
        round_targets(1.0, 0.2)


def test_params_are_validated():
    lth, imp = METHODS.get("lth").Params, METHODS.get("imp").Params
    assert lth().rate == 0.2 and lth().rewind == "early" and lth().scope == "global"
    assert imp().lr_rewind is False and imp().round_steps is None
    for bad in ({"rate": 0.0}, {"rate": 1.0}, {"round_steps": 0}, {"rewind": "late"}, {"scope": "erk"}):
        with pytest.raises(ValueError):
            lth(**bad)
    with pytest.raises(ValueError):
        imp(lr_rewind=True, rewind="init")  # imp has no rewind option


def test_replay_spec_and_the_trainer_replay_the_dense_schedule():
    dense = TrainSpec(steps=10, lr_schedule="step")
    spec = replay_spec(dense, 3, None)
    assert spec.steps == 7
    # Trained with schedule=dense and step_offset=3, step j gets the dense LR of step j + 3 (period 10 // 5 =
    # 2: factors 0.5^((j+3)//2)), not the LR of a 7-step schedule (period 7 // 5 = 1).
    model = ARCHS.get("deeplab_resnet34")({"depth_zbuffer": 1}, width=0.125, head_width=0.03125)
    runner = StepRunner(model, "nyuv2", spec, torch.device("cpu"), step_offset=3, schedule=dense)
    batch = {"input": torch.randn(2, 3, 16, 16), "depth_zbuffer": torch.rand(2, 1, 16, 16) + 0.5}
    lrs = [runner(batch, j)["lr"] for j in range(4)]
    assert lrs == pytest.approx([dense.lr * 0.5 ** ((j + 3) // 2) for j in range(4)], rel=1e-12)
    assert replay_spec(dense, 3, 4).steps == 4
    with pytest.raises(ValueError, match="round_steps"):
        replay_spec(TrainSpec(steps=5, rewind_step=5), 5, None)


# ------------------------------------------------------------------------------------------ dense stage


@pytest.mark.slow
def test_dense_stage_saves_a_rewind_snapshot_between_init_and_final(runs):
    matrix, store, cells, _, dense_dir = runs
    dense = store.result(matrix.dense_stages()[0].run_id)
    assert (dense_dir / "rewind.pt").is_file()
    assert dense.rewind_step == 1 == max(1, round(0.05 * 6))
    cell = cells["lth"]
    ctx = MethodContext(
        build_model(cell), cell, train_set=None, device=torch.device("cpu"), dense_dir=dense_dir
    )
    assert ctx.rewind_step() == 1
    init, rewind, final = (ctx.dense_weights(w) for w in ("init", "rewind", "final"))
    prunable = list(ctx.prunable())
    assert set(init) == set(rewind) == set(final)
    assert any(not torch.equal(init[n], rewind[n]) for n in prunable)
    assert any(not torch.equal(final[n], rewind[n]) for n in prunable)
    # Adam's first step moves every weight with a nonzero gradient by about lr: most weights differ.
    moved = sum(int((init[n] != rewind[n]).sum()) for n in prunable)
    assert moved > 0.5 * sum(init[n].numel() for n in prunable)


# ------------------------------------------------------------------------------------------ cells


LOTTERY = ("lth", "lth_init", "imp", "imp_lrr")


@pytest.mark.slow
@pytest.mark.parametrize("key", LOTTERY)
def test_target_and_steps_total(runs, key):
    _, store, cells, captured, _ = runs
    cell = cells[key]
    result = store.result(cell.run_id)
    model, masks = (
        _load(store.run_dir(cell.run_id) / "model.pt"),
        load_masks(store.run_dir(cell.run_id)),
    )
    zeros = sum(int((model[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert abs(zeros / total - TARGET) <= 1e-3
    assert sum(int((~m).sum()) for m in masks.values()) == round(TARGET * total)  # global: exact count
    rounds = len(round_targets(TARGET, 0.5))
    assert rounds == 2 and len(captured[cell.run_id]) == rounds
    assert result.steps_method == rounds * ROUND_STEPS
    dense_steps = store.result(cell.dense().run_id).steps_total
    assert dense_steps == 6 and result.steps_total == dense_steps + rounds * ROUND_STEPS


@pytest.mark.slow
@pytest.mark.parametrize("key", LOTTERY)
def test_one_log_record_per_round(runs, key):
    _, store, cells, _, _ = runs
    cell = cells[key]
    records = [r for r in _log(store, cell.run_id) if "round" in r]
    assert [(r["round"], r["rounds"], r["sparsity"]) for r in records] == [(1, 2, 0.5), (2, 2, 0.7)]
    n = sum(m.numel() for m in load_masks(store.run_dir(cell.run_id)).values())
    assert [r["kept"] for r in records] == [n - round(0.5 * n), n - round(0.7 * n)]
    assert [r["achieved"] for r in records] == pytest.approx([0.5, 0.7], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("key", LOTTERY)
def test_masks_only_grow_and_pruned_weights_stay_zero(runs, key):
    _, store, cells, captured, dense_dir = runs
    cell = cells[key]
    rounds = captured[cell.run_id]
    final_masks = load_masks(store.run_dir(cell.run_id))
    model = _load(store.run_dir(cell.run_id) / "model.pt")
    first, second = rounds[0]["masks"], rounds[1]["masks"]
    for n in first:
        assert not (second[n] & ~first[n]).any(), n  # nothing pruned in round 1 comes back in round 2
        assert torch.equal(second[n], final_masks[n])
        assert (model[n][~first[n]] == 0).all() and (model[n][~second[n]] == 0).all()
    # Round 1 prunes the trained dense model by global |w|; round 2 the weights that round 1 retrained.
    dense = _load(dense_dir / "model.pt")
    expected = select_masks({n: dense[n].abs() for n in first}, 0.5, "global")
    assert all(torch.equal(expected[n], first[n]) for n in first)
    retrained = rounds[0]["after"]
    expected = select_masks({n: retrained[n].abs() for n in first}, 0.7, "global", current=first)
    assert all(torch.equal(expected[n], second[n]) for n in first)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "snapshot", "offset"), [("lth", "rewind.pt", 1), ("lth_init", "init.pt", 0)])
def test_lth_rewinds_survivors_to_the_snapshot(runs, key, snapshot, offset):
    _, _, cells, captured, dense_dir = runs
    state = _load(dense_dir / snapshot)
    for record in captured[cells[key].run_id]:  # at the start of every round's retraining
        assert record["offset"] == offset
        masks, before = record["masks"], record["before"]
        for name, value in state.items():
            if name in masks:
                assert torch.equal(before[name], value * masks[name]), name
            else:  # BN parameters and running statistics, biases: the whole snapshot is restored
                assert torch.equal(before[name], value), name


@pytest.mark.slow
def test_imp_finetunes_the_pruned_weights_without_rewinding(runs):
    _, _, cells, captured, dense_dir = runs
    dense = _load(dense_dir / "model.pt")
    first, second = captured[cells["imp"].run_id]
    for n, mask in first["masks"].items():
        assert torch.equal(first["before"][n], dense[n] * mask)  # the trained weights, just masked
        assert torch.equal(second["before"][n], first["after"][n] * second["masks"][n])


def _lrs(store, run_id, phase):
    steps = [r for r in _log(store, run_id) if r.get("phase") == phase and "step" in r]
    return [[r["lr"] for r in steps[i : i + ROUND_STEPS]] for i in range(0, len(steps), ROUND_STEPS)]


REPLAYS = [
    ("lth", "retrain", 1),
    ("lth_init", "retrain", 0),
    ("imp_lrr", "retrain", 1),
    ("imp", "finetune", None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("key", "phase", "offset"), REPLAYS)
def test_learning_rate_replays_the_right_schedule(runs, key, phase, offset):
    matrix, store, cells, _, _ = runs
    per_round = _lrs(store, cells[key].run_id, phase)
    assert len(per_round) == 2
    if offset is None:  # imp: the finetune recipe on round_steps steps, from its step 0
        spec = matrix.finetune.model_copy(update={"steps": ROUND_STEPS})
        expected = [spec.lr * lr_factor(spec, j) for j in range(ROUND_STEPS)]
    else:  # the dense cosine schedule over T = 6, from step k (not a schedule of horizon round_steps)
        train = matrix.train
        expected = [train.lr * 0.5 * (1 + math.cos(math.pi * (j + offset) / 6)) for j in range(ROUND_STEPS)]
    for lrs in per_round:
        assert lrs == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_one_round_imp_equals_one_shot_magnitude(runs):
    _, store, cells, _, _ = runs
    one, magnitude = (store.run_dir(cells[k].run_id) for k in ("imp_one", "magnitude"))
    masks_one, masks_mag = load_masks(one), load_masks(magnitude)
    assert all(torch.equal(masks_one[n], masks_mag[n]) for n in masks_mag)
    model_one, model_mag = _load(one / "model.pt"), _load(magnitude / "model.pt")
    assert all(torch.equal(model_one[n], model_mag[n]) for n in model_mag)
    a, b = store.result(cells["imp_one"].run_id), store.result(cells["magnitude"].run_id)
    assert a.metrics == b.metrics and a.steps_total == b.steps_total == 6 + 2


@pytest.mark.slow
def test_same_seed_gives_identical_masks(runs, tmp_path):
    """The lth cell rerun on a copy of the store (same dense stage, its own result removed) is identical."""
    _, store, cells, _, _ = runs
    cell = cells["lth"]
    shutil.copytree(store.root, tmp_path / "again")
    again = Store(tmp_path / "again")
    shutil.rmtree(again.run_dir(cell.run_id))
    outcome = run_matrix(_matrix(("lth",)), again, show_progress=False)
    assert outcome.failed == {} and outcome.done == [cell.run_id]  # only the cell ran again
    first, second = (load_masks(s.run_dir(cell.run_id)) for s in (store, again))
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert store.result(cell.run_id).metrics == again.result(cell.run_id).metrics
