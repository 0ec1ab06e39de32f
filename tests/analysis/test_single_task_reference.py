"""Δm against single-task models (`stl_reference: true`): one single-task dense stage per task, found by
setting, and every cell's Δm computed against them by hand."""

from __future__ import annotations

import pytest

from mtlprune.analysis import load_results
from mtlprune.analysis.delta import delta_m
from mtlprune.execution.matrix import run_matrix
from mtlprune.store import Store
from tests.helpers import TASKS3, tiny_matrix


def test_stl_reference_plans_one_single_task_stage_per_task():
    plain, with_stl = tiny_matrix(), tiny_matrix(stl_reference=True)
    assert [d.data.tasks for d in plain.dense_stages()] == [tuple(TASKS3)]
    stages = with_stl.dense_stages()
    assert [d.data.tasks for d in stages] == [tuple(TASKS3), *((t,) for t in TASKS3)]
    # the same training and setting otherwise; the cells' run ids do not change with the flag
    assert {d.train.model_dump_json() for d in stages} == {plain.train.model_dump_json()}
    assert [c.run_id for c in with_stl.expand()] == [c.run_id for c in plain.expand()]


@pytest.mark.slow
def test_delta_m_against_single_task_models_by_hand(tmp_path):
    # 40 dense steps: enough that no reference metric is 0 (a relative change needs a non-zero reference)
    train = {"steps": 40, "batch_size": 4, "lr": 0.003}
    matrix = tiny_matrix(stl_reference=True, methods=[{"name": "magnitude"}], sparsities=[0.5], train=train)
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    (row,) = load_results(tmp_path).to_dict("records")
    (cell,) = matrix.expand()
    single = {d.data.tasks[0]: store.result(d.run_id).metrics for d in matrix.dense_stages()[1:]}
    reference = {k: v for task, metrics in single.items() for k, v in metrics.items() if k.startswith(task)}
    metrics = store.result(cell.run_id).metrics
    assert row["delta_m_stl"] == pytest.approx(delta_m(metrics, reference, list(TASKS3), dataset="nyuv2"))
    # by hand for one task: mean over the segmentation metrics of the signed relative change, in %
    seg = [100 * (metrics[k] - single["segment_semantic"][k]) / single["segment_semantic"][k]
           for k in ("segment_semantic.miou", "segment_semantic.pixel_acc")]  # fmt: skip
    normal_keys = [k for k in single["normal"] if k.startswith("normal.")]
    signs = {"normal.mean": -1, "normal.median": -1}
    normal = [
        100 * signs.get(k, 1) * (metrics[k] - single["normal"][k]) / single["normal"][k] for k in normal_keys
    ]
    depth_keys = [k for k in single["depth_zbuffer"] if k.startswith("depth_zbuffer.")]
    depth_signs = {"depth_zbuffer.abs_err": -1, "depth_zbuffer.rel_err": -1}
    depth = [
        100 * depth_signs.get(k, 1) * (metrics[k] - single["depth_zbuffer"][k]) / single["depth_zbuffer"][k]
        for k in depth_keys
    ]
    by_hand = (sum(seg) / len(seg) + sum(normal) / len(normal) + sum(depth) / len(depth)) / 3
    assert row["delta_m_stl"] == pytest.approx(by_hand)
    assert row["delta_m_stl"] != pytest.approx(row["delta_m"])  # a different reference than the MTL model
