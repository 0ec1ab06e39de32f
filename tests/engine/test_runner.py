"""End to end on a tiny matrix: the store, idempotence, determinism, failures, load_results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtlprune.analysis import load_results
from mtlprune.analysis.delta import delta_m, delta_t
from mtlprune.engine.context import MethodContext
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.base import PruningMethod
from mtlprune.registry import METHODS
from mtlprune.store import Store
from tests.helpers import TASKS3, load_masks, tiny_matrix, tiny_matrix_dict

TASKS1 = ["segment_semantic"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny matrix (random, magnitude × 0.5, 0.9) run to completion."""
    store = Store(tmp_path_factory.mktemp("store"))
    matrix = tiny_matrix()
    outcome = run_matrix(matrix, store, show_progress=False)
    return matrix, store, outcome


@pytest.mark.slow
def test_every_stage_finishes_and_writes_the_store_layout(finished):
    matrix, store, outcome = finished
    assert outcome.failed == {} and len(outcome.done) == 1 + 4
    dense_id = matrix.dense_stages()[0].run_id
    assert {p.name for p in store.run_dir(dense_id).iterdir()} >= {
        "spec.json",
        "result.json",
        "model.pt",
        "init.pt",
    }
    for cell in matrix.expand():
        files = {p.name for p in store.run_dir(cell.run_id).iterdir()}
        assert {"spec.json", "result.json", "masks.npz", "log.jsonl", "status.json"} <= files
        assert not any(name.endswith(".tmp") for name in files)
        spec = json.loads((store.run_dir(cell.run_id) / "spec.json").read_text())
        assert spec["run_id"] == cell.run_id and spec["dense_run_id"] == dense_id


@pytest.mark.slow
def test_rerun_trains_nothing(finished):
    matrix, store, _ = finished
    before = {p: p.stat().st_mtime_ns for p in store.runs.glob("*/result.json")}
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.done == [] and outcome.failed == {} and len(outcome.skipped) == 5
    assert {p: p.stat().st_mtime_ns for p in store.runs.glob("*/result.json")} == before


@pytest.mark.slow
def test_achieved_sparsity_and_masks_match_the_target(finished):
    matrix, store, _ = finished
    for cell in matrix.expand():
        result = store.result(cell.run_id)
        assert abs(result.sparsity["achieved_sparsity"] - cell.target_sparsity) < 0.001
        masks = load_masks(store.run_dir(cell.run_id))
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        assert result.sparsity["prunable_nonzero"] <= kept  # pruned weights are exactly zero
        assert result.sparsity["requested_sparsity"] == cell.target_sparsity
        assert abs((1 - kept / total) - cell.target_sparsity) < 0.001


@pytest.mark.slow
def test_steps_total_counts_the_dense_share(finished):
    matrix, store, _ = finished
    for cell in matrix.expand():
        result = store.result(cell.run_id)
        assert result.steps_total == matrix.train.steps + matrix.finetune.steps
        assert result.steps_method == matrix.finetune.steps


@pytest.mark.slow
def test_load_results_one_row_per_cell_with_delta_t_against_dense(finished):
    matrix, store, _ = finished
    frame = load_results(store.root)
    assert len(frame) == 4 and set(frame["status"]) == {"done"}
    columns = [
        *("run_id", "dataset", "tasks", "arch", "method", "target_sparsity", "achieved_sparsity", "seed"),
        *("delta_t", "delta_m", "delta_note", "steps_total", "wall_s", "status", "segment_semantic.miou"),
        *(
            "normal.median",
            "depth_zbuffer.delta_1_25_3",
            "sparsity.head.normal",
            "sparsity.path.depth_zbuffer",
        ),
        *("sparsity.all_params", "params_nonzero", "flops_dense", "flops_sparse", "flops_sparse.path.normal"),
    ]
    for column in columns:
        assert column in frame, column
    dense = store.result(matrix.dense_stages()[0].run_id).metrics
    for _, row in frame.iterrows():
        metrics = store.result(row["run_id"]).metrics
        try:
            expected = delta_t(metrics, dense, TASKS3)
        except ValueError as exc:  # a 4-step dense model can score exactly 0 somewhere: ΔT is undefined
            assert pd.isna(row["delta_t"]) and str(exc).strip("'") == row["delta_note"]
        else:
            assert row["delta_t"] == pytest.approx(expected["delta_t"])
            assert row["delta_m"] == pytest.approx(delta_m(metrics, dense, TASKS3))
    assert list(load_results(store.root, [c.run_id for c in matrix.expand()])["run_id"]) == [
        c.run_id for c in matrix.expand()
    ]


@pytest.mark.slow
def test_same_spec_gives_the_same_metrics(finished, tmp_path):
    _, store, _ = finished
    small = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.9])
    other = Store(tmp_path)
    run_matrix(small, other, show_progress=False)
    cell = small.expand()[0]
    assert other.result(cell.run_id).metrics == store.result(cell.run_id).metrics


class _Leaky(PruningMethod):
    """Test-only: prunes, then writes into a pruned weight."""

    def run(self, ctx: MethodContext) -> None:
        scores = {n: p.detach().abs() for n, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores))
        name, mask = next(iter(ctx.masks.items()))
        with torch.no_grad():
            ctx.prunable()[name][~mask.to(ctx.prunable()[name].device)] = 1.0


class _Broken(PruningMethod):
    """Test-only: raises."""

    def run(self, ctx: MethodContext) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def test_methods():
    for name, cls in (("test-leaky", _Leaky), ("test-broken", _Broken)):
        METHODS.register(name)(cls)
    yield
    for name in ("test-leaky", "test-broken"):
        METHODS._items.pop(name)


@pytest.mark.slow
def test_failures_are_recorded_and_the_rest_goes_on(test_methods, tmp_path):
    matrix = tiny_matrix(methods=[{"name": "test-broken"}, {"name": "test-leaky"}, {"name": "random"}],
                         sparsities=[0.5])  # fmt: skip
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    broken, leaky, random_cell = matrix.expand()
    assert set(outcome.failed) == {broken.run_id, leaky.run_id}
    assert store.status(random_cell.run_id) == "done"
    assert store.status_record(broken.run_id).error == "RuntimeError: boom"
    assert "pruned weights of" in store.status_record(leaky.run_id).error
    frame = load_results(store.root)
    assert sorted(frame["status"]) == ["done", "failed", "failed"]
    assert frame.loc[frame["status"] == "failed", "delta_t"].isna().all()
    assert not (Path(store.run_dir(broken.run_id)) / "result.json").exists()


@pytest.mark.slow
def test_pretrained_backbone_weights_are_loaded_into_the_dense_stage(tmp_path):
    from mtlprune.engine.build import build_model

    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5])
    torch.manual_seed(123)
    donor = build_model(matrix.dense_stages()[0]).backbone.state_dict()
    weights = tmp_path / "backbone.pt"
    torch.save(donor, weights)
    arch = dict(matrix.archs[0].model_dump(exclude={"pretrained_sha256"}), pretrained=str(weights))
    pretrained = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5], archs=[arch])
    store = Store(tmp_path / "store")
    assert run_matrix(pretrained, store, show_progress=False).failed == {}
    init = torch.load(store.run_dir(pretrained.dense_stages()[0].run_id) / "init.pt", weights_only=True)
    for key, value in donor.items():
        assert torch.equal(init[f"backbone.{key}"], value), key


@pytest.mark.slow
def test_mobilenetv2_cell_runs_end_to_end(tmp_path):
    matrix = tiny_matrix(
        archs=[{"name": "mobilenetv2", "width": 0.25, "head_width": 0.03125}],
        methods=[{"name": "magnitude", "params": {"scope": "layer"}}],
        sparsities=[0.7],
    )
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    result = store.result(matrix.expand()[0].run_id)
    assert abs(result.sparsity["achieved_sparsity"] - 0.7) < 0.001
    for layer in result.sparsity["layers"].values():  # layer scope: every layer at the target
        assert abs(layer["sparsity"] - 0.7) <= 1 / layer["params"] + 1e-9
    assert result.costs["flops_sparse"] < result.costs["flops_dense"]


@pytest.mark.slow
def test_each_seed_is_compared_with_its_own_dense_stage_and_aggregated(tmp_path):
    from mtlprune.analysis import aggregate

    # Segmentation only: after 6 dense steps some normal and depth metrics are exactly 0 (ΔT undefined).
    data = {**tiny_matrix_dict()["datasets"][0], "tasks": TASKS1}
    matrix = tiny_matrix(datasets=[data], methods=[{"name": "magnitude"}], sparsities=[0.5], seeds=[0, 1])
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    dense = {d.seed: d.run_id for d in matrix.dense_stages()}
    assert len(set(dense.values())) == 2
    frame = load_results(store.root)
    assert sorted(frame["seed"]) == [0, 1]
    for _, row in frame.iterrows():
        assert row["dense_run_id"] == dense[row["seed"]]
        own = store.result(dense[row["seed"]]).metrics
        metrics = store.result(row["run_id"]).metrics
        assert row["delta_t"] == pytest.approx(delta_t(metrics, own, TASKS1)["delta_t"])
    inits = [torch.load(store.run_dir(dense[seed]) / "init.pt", weights_only=True) for seed in (0, 1)]
    assert any(not torch.equal(inits[0][k], inits[1][k]) for k in inits[0])  # two seeds, two initialisations
    (agg,) = aggregate(frame).to_dict("records")
    assert agg["n_seeds"] == 2 and agg["n_failed"] == 0
    assert agg["delta_t.mean"] == pytest.approx(frame["delta_t"].mean())
    assert agg["delta_t.std"] == pytest.approx(frame["delta_t"].std(ddof=1))


@pytest.mark.slow
def test_tensorboard_event_files_mirror_the_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}], sparsities=[0.5], runtime={"device": "cpu", "tensorboard": True}
    )
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    run_id = matrix.expand()[0].run_id
    events = EventAccumulator(str(store.run_dir(run_id) / "tensorboard"))
    events.Reload()
    losses = events.Scalars("finetune/loss")
    logged = [json.loads(line) for line in (store.run_dir(run_id) / "log.jsonl").open()]
    expected = [r["loss"] for r in logged if r.get("phase") == "finetune" and "loss" in r]
    assert [e.value for e in losses] == pytest.approx(expected, rel=1e-6) and expected
    assert store.result(run_id).method_state == {}
