"""A third dataset is a complete plugin: registered from tests/, it runs a tiny matrix end to end (dense
stage, cells, trivial predictor, ΔT, the report's tables) without a line of core code knowing it."""

from __future__ import annotations

import math

import pytest

from mtlprune.analysis import load_results
from mtlprune.analysis.report import build_report
from mtlprune.execution.matrix import run_matrix
from mtlprune.registry import DATASETS, load_plugins
from mtlprune.spec import parse_matrix
from mtlprune.store import Store
from mtlprune.vocabulary import DIRECTIONS, MAIN_METRIC, TASKS, direction
from tests.helpers import tiny_matrix_dict

PLUGIN = "tests.plugins.toy_dataset"


@pytest.fixture(scope="module")
def toy():
    load_plugins([PLUGIN])
    return DATASETS.get("toy")


def _matrix():
    data = {
        "dataset": "toy",
        "tasks": ["segment_semantic", "saliency"],
        "synthetic": {"n_train": 8, "n_test": 4, "height": 16, "width": 16, "seed": 3},
        "crop": [16, 16],
    }
    return parse_matrix(tiny_matrix_dict(datasets=[data], sparsities=[0.5]), "<toy>")


def test_the_toy_vocabulary_joins_the_tables(toy):
    assert toy.vocabulary.dataset == "toy"
    assert "saliency" in TASKS and MAIN_METRIC["saliency"] == "mae"
    assert direction("saliency.mae") == DIRECTIONS["saliency.max_err"] == -1
    metric = toy.metric("saliency", "standard")
    import torch

    metric.update(torch.tensor([[0.0, 0.5]]), torch.tensor([[0.25, 0.25]]))
    assert metric.compute() == {"mae": 0.25, "max_err": 0.25}


@pytest.mark.slow
def test_a_tiny_matrix_runs_on_the_toy_dataset(toy, tmp_path):
    matrix = _matrix()
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, outcome.failed
    frame = load_results(tmp_path).set_index("method")
    assert set(frame.index) == {"random", "magnitude"} and set(frame["dataset"]) == {"toy"}
    dense = store.result(matrix.expand()[0].dense().run_id)
    assert set(dense.metrics) == {
        "segment_semantic.miou",
        "segment_semantic.pixel_acc",
        "saliency.mae",
        "saliency.max_err",
    }
    assert set(dense.trivial_metrics) == set(dense.metrics)
    d = dense.metrics
    for method, row in frame.iterrows():
        # ΔT by hand over the toy's own ΔT subset: mIoU (higher is better) and mae (lower is better), one
        # metric per task, so ΔT = mean of the two signed relative changes ×100; max_err does not enter.
        seg = 100 * (row["segment_semantic.miou"] - d["segment_semantic.miou"]) / d["segment_semantic.miou"]
        sal = -100 * (row["saliency.mae"] - d["saliency.mae"]) / d["saliency.mae"]
        assert math.isfinite(row["delta_t"]) and row["delta_t"] == pytest.approx((seg + sal) / 2), method
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
    report = build_report(tmp_path)  # the report knows the toy's tasks and metrics from its vocabulary
    assert report.counts == {"done": 2}
    # a tiny budget logs one training record per run: the overview says it is nearly empty; every cell is
    # on its target, so there is no table of misses; nothing else is left out
    assert report.notes == [
        "figure training_overview is nearly empty: training overview: only 1 point(s) to show",
        "table sparsity_misses not written: every finished cell is within 0.1 pp of its target sparsity",
    ]
    comparison = (report.out / "tables" / "comparison.md").read_text()
    # its own display names: a header for the task's main metric, its ΔT subset in the legend
    assert "| Sal MAE ↓ |" in comparison and "ΔT metrics: Toy: Seg mIoU, Sal MAE." in comparison
