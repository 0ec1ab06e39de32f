"""Divergence is a failure, not a result; the dense stage records its convergence and its trivial predictor.

mtlprune.engine.divergence: a task loss far above the untrained network's for too long, or final metrics that
are non-finite or worse than any constant prediction, end the stage as ``failed (diverged)`` with the step and
the losses. mtlprune.engine.trivial: the best constant prediction per task (majority class, median depth, mean
normal).
mtlprune.engine.convergence: the relative loss drop over the last 20% of dense training.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtlprune.engine.convergence import TOLERANCE, loss_convergence
from mtlprune.engine.divergence import (
    ABSURD_FACTOR,
    DIVERGENCE_FACTOR,
    DIVERGENCE_PATIENCE,
    Divergence,
    DivergenceGuard,
    check_final_metrics,
)
from mtlprune.engine.runner import run_stage
from mtlprune.engine.trivial import fit_trivial
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import plan
from mtlprune.store import Store
from mtlprune.vocabulary import direction
from tests.helpers import tiny_matrix

REFERENCE = {"segment_semantic": 2.0, "depth_zbuffer": 0.5}

# ------------------------------------------------------------------------------------------- the guard


def test_guard_fires_after_patience_consecutive_steps_above_the_ceiling():
    guard = DivergenceGuard(REFERENCE)
    high = {"segment_semantic": 2.0 * DIVERGENCE_FACTOR + 1, "depth_zbuffer": 0.1}
    for step in range(DIVERGENCE_PATIENCE - 1):
        guard.check(step, high, last=False)
    with pytest.raises(Divergence, match=f"at step {DIVERGENCE_PATIENCE - 1}") as caught:
        guard.check(DIVERGENCE_PATIENCE - 1, high, last=False)
    assert caught.value.details["step"] == DIVERGENCE_PATIENCE - 1
    assert caught.value.details["ceilings"] == {"segment_semantic": 20.0, "depth_zbuffer": 5.0}
    assert caught.value.details["losses"] == high


def test_a_spike_shorter_than_the_patience_is_not_divergence():
    guard = DivergenceGuard(REFERENCE)
    high, low = (
        {"segment_semantic": 100.0, "depth_zbuffer": 0.1},
        {"segment_semantic": 1.0, "depth_zbuffer": 0.1},
    )
    for step in range(3 * DIVERGENCE_PATIENCE):
        guard.check(step, high if step % DIVERGENCE_PATIENCE else low, last=False)
    assert guard.above == DIVERGENCE_PATIENCE - 1


def test_above_the_ceiling_at_the_last_step_is_divergence():
    guard = DivergenceGuard(REFERENCE)
    with pytest.raises(Divergence, match="at the last step"):
        guard.check(4, {"segment_semantic": 1.0, "depth_zbuffer": 5.01}, last=True)


def test_guard_learns_its_reference_from_the_first_step_and_checkpoints_it():
    guard = DivergenceGuard()
    guard.check(0, {"normal": 0.4}, last=False)
    assert guard.ceilings() == {"normal": pytest.approx(4.0)}
    guard.check(1, {"normal": 5.0}, last=False)
    restored = DivergenceGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.reference == {"normal": 0.4} and restored.above == 1


def test_final_metrics_non_finite_or_absurd_are_divergence():
    trivial = {"depth_zbuffer.abs_err": 0.8, "segment_semantic.miou": 0.05}
    check_final_metrics({"depth_zbuffer.abs_err": 7.9, "segment_semantic.miou": 0.0}, trivial, direction)
    with pytest.raises(Divergence, match="not finite"):
        check_final_metrics({"depth_zbuffer.abs_err": math.nan}, trivial, direction)
    with pytest.raises(Divergence, match=r"depth_zbuffer.abs_err = 8.1 is more than 10× the trivial"):
        check_final_metrics({"depth_zbuffer.abs_err": ABSURD_FACTOR * 0.8 + 0.1}, trivial, direction)
    check_final_metrics({"depth_zbuffer.abs_err": 1e9}, None, direction)  # no trivial: finiteness only


# ----------------------------------------------------------------------------------- end to end


def _failure(store: Store, run_id: str) -> dict:
    assert not store.is_done(run_id)
    return json.loads((store.run_dir(run_id) / "status.json").read_text())


@pytest.mark.slow
def test_lr_1e6_in_dense_training_is_diverged_never_done(tmp_path):
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5], train={"steps": 6, "lr": 1e6})
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    dense_id = matrix.dense_stages()[0].run_id
    record = _failure(store, dense_id)
    assert record["kind"] == "diverged" and "Divergence" in record["error"]
    assert 0 <= record["divergence"]["step"] < 6 and set(record["divergence"]["losses"]) == set(
        matrix.datasets[0].tasks
    )
    assert set(outcome.failed) == {dense_id, matrix.expand()[0].run_id}  # the cell is blocked
    assert _failure(store, matrix.expand()[0].run_id)["kind"] == "blocked"


@pytest.mark.slow
def test_lr_1e6_in_finetuning_is_diverged_never_done(tmp_path):
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}], sparsities=[0.5], finetune={"steps": 4, "batch_size": 4, "lr": 1e6}
    )
    store = Store(tmp_path)
    dense_stage, cell = plan(matrix)
    assert run_stage(dense_stage, store, matrix.runtime).status == "done"
    outcome = run_stage(cell, store, matrix.runtime)
    assert (outcome.status, outcome.kind) == ("failed", "diverged")
    record = _failure(store, cell.run_id)
    dense = store.result(dense_stage.run_id)
    assert record["divergence"]["ceilings"] == {
        t: pytest.approx(DIVERGENCE_FACTOR * v) for t, v in dense.initial_losses.items()
    }


@pytest.mark.slow
def test_dense_result_records_initial_losses_convergence_and_trivial_metrics(tmp_path):
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}], sparsities=[0.5], runtime={"device": "cpu", "log_every": 1}
    )
    store = Store(tmp_path)
    dense = plan(matrix)[0]
    assert run_stage(dense, store, matrix.runtime).status == "done"
    result = store.result(dense.run_id)
    first = json.loads((store.run_dir(dense.run_id) / "log.jsonl").read_text().splitlines()[0])
    assert result.initial_losses == {t: first[f"loss.{t}"] for t in matrix.datasets[0].tasks}
    assert set(result.trivial_metrics) == set(result.metrics)
    # 6 steps: the window is the last 2 (steps 4, 5), too few for a verdict
    convergence = result.convergence
    assert convergence["window_steps"] == convergence["steps_seen"] == 2 and convergence["converged"] is None


# ------------------------------------------------------------------------------- trivial predictor


class _Labels(torch.utils.data.Dataset):
    """8 samples with known statistics: class 2 on 60% of pixels, depths 1..5 m, one normal direction."""

    registry_name = "nyuv2"

    def __len__(self) -> int:
        return 8

    def set_epoch(self, epoch: int) -> None:
        return None

    def __getitem__(self, index: int) -> dict:
        seg = torch.full((4, 5), 2, dtype=torch.int64)
        seg[:, 3:] = index % 3  # 40% of pixels another class
        depth = torch.arange(1.0, 6.0).repeat(4, 1)[None]  # every row 1, 2, 3, 4, 5: median 3
        normal = torch.tensor([0.6, 0.0, 0.8])  # a unit vector, stored in NYU's uint8 encoding
        encoded = ((normal + 1) * 127.5).round().to(torch.uint8)[:, None, None].expand(3, 4, 5)
        return {
            "input": torch.zeros(3, 4, 5),
            "segment_semantic": seg,
            "depth_zbuffer": depth,
            "normal": encoded,
        }


def test_trivial_predictor_is_the_majority_class_the_median_depth_and_the_mean_normal():
    model = fit_trivial("nyuv2", {"segment_semantic": 13, "depth_zbuffer": 1, "normal": 3}, _Labels())
    values = {t: v.detach() for t, v in model.values.items()}
    assert int(values["segment_semantic"].argmax()) == 2
    assert float(values["depth_zbuffer"][0]) == pytest.approx(3.0, abs=0.05)
    decoded = ((torch.tensor([0.6, 0.0, 0.8]) + 1) * 127.5).round() / 127.5 - 1
    cosine = torch.nn.functional.cosine_similarity(values["normal"], decoded, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------------- convergence


def _losses(values: list[float]) -> list[tuple[int, float]]:
    return list(enumerate(values))


def test_convergence_is_the_relative_drop_over_the_last_fifth():
    flat = loss_convergence(_losses([5.0] * 80 + [1.0] * 20), steps=100)
    assert flat["rel_drop"] == 0.0 and flat["converged"] is True and flat["steps_seen"] == 20
    # last 20 steps: 10 at 1.2 then 10 at 1.0 → (1.2 − 1.0) / 1.1
    falling = loss_convergence(_losses([5.0] * 80 + [1.2] * 10 + [1.0] * 10), steps=100)
    assert falling["rel_drop"] == pytest.approx(0.2 / 1.1) and falling["converged"] is False
    assert falling["rel_drop"] > TOLERANCE and falling["window_loss"] == pytest.approx(1.1)


def test_convergence_is_unknown_with_too_few_steps_in_the_window():
    out = loss_convergence(_losses([3.0] * 40), steps=40)
    assert out["steps_seen"] == 8 and out["rel_drop"] is None and out["converged"] is None
