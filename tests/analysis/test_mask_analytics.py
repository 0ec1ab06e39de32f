"""Mask analytics: IoU, Jaccard and per-layer sparsity against hand counts; figures; a tiny real store."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtlprune.analysis import (
    component_of,
    layer_sparsity,
    load_masks,
    load_results,
    load_task_masks,
    mask_overlap,
    overlap_matrix,
    task_iou,
)
from mtlprune.analysis.mask_figures import layer_sparsity_heatmap, overlap_heatmap, task_iou_curve
from mtlprune.analysis.masks import OVERALL
from mtlprune.store.maskio import TASK_MASKS, write_task_masks


def b(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=bool)


def test_component_of_matches_the_model_naming():
    assert component_of("backbone.layer3.0.conv1.weight") == "backbone"
    assert component_of("heads.normal.branches.0.conv1.weight") == "head/normal"
    for bad in ("stem.weight", "heads.normal", "heads..x.weight"):
        with pytest.raises(KeyError, match="no component"):
            component_of(bad)


def test_layer_sparsity_hand_example():
    masks = {
        "backbone.conv1.weight": b(1, 0, 0, 0),  # kept 1 of 4 → 0.75
        "backbone.layer1.0.conv1.weight": np.ones((2, 2), bool),  # kept 4 of 4 → 0
        "heads.normal.b.0.weight": b(1, 1, 0),  # kept 2 of 3 → 1/3
        "heads.segment_semantic.b.0.weight": b(0, 0),  # kept 0 of 2 → 1
        "heads.normal.b.1.weight": b(1),  # second normal layer: depth 1
    }
    frame = layer_sparsity(masks)
    assert list(frame["layer"]) == list(masks)
    assert list(frame["component"]) == ["backbone"] * 2 + [
        "head/normal",
        "head/segment_semantic",
        "head/normal",
    ]
    assert list(frame["depth"]) == [0, 1, 0, 0, 1]
    assert list(frame["params"]) == [4, 4, 3, 2, 1] and list(frame["kept"]) == [1, 4, 2, 0, 1]
    assert frame["sparsity"].tolist() == pytest.approx([0.75, 0.0, 1 / 3, 1.0, 0.0])


def test_task_iou_two_tasks_with_an_empty_union():
    seg = {
        "backbone.a.weight": b(1, 1, 1, 1, 0, 0, 0, 0),
        "backbone.b.weight": np.zeros((2, 2), bool),
        "backbone.c.weight": b(1, 0, 1),
        "heads.segment_semantic.x.weight": b(1, 0),  # private heads are not compared
    }
    normal = {
        "backbone.a.weight": b(1, 1, 0, 0, 1, 0, 0, 0),  # ∩ = {0, 1} = 2, ∪ = {0..4} = 5 → 0.4
        "backbone.b.weight": np.zeros((2, 2), bool),  # nobody keeps anything: ∪ = 0 → NaN
        "backbone.c.weight": b(1, 0, 1),  # identical: ∩ = ∪ = 2 → 1
        "heads.normal.x.weight": b(0, 1, 1),
    }
    frame = task_iou({"segment_semantic": seg, "normal": normal}).set_index("layer")
    assert list(frame.index) == ["backbone.a.weight", "backbone.b.weight", "backbone.c.weight", OVERALL]
    assert frame.loc["backbone.a.weight", "iou"] == pytest.approx(0.4)
    assert math.isnan(frame.loc["backbone.b.weight", "iou"])
    assert frame.loc["backbone.c.weight", "iou"] == 1.0
    # Overall pools the weights: ∩ = 2 + 0 + 2 = 4, ∪ = 5 + 0 + 2 = 7.
    assert (frame.loc[OVERALL, "intersection"], frame.loc[OVERALL, "union"]) == (4, 7)
    assert frame.loc[OVERALL, "iou"] == pytest.approx(4 / 7)
    # With 2 tasks the mean over the single pair is the same number.
    np.testing.assert_array_equal(frame["mean_pairwise_iou"], frame["iou"])
    assert list(frame["depth"].iloc[:3]) == [0, 1, 2] and frame["depth"].isna().iloc[3]
    assert frame.loc[OVERALL, "kept.segment_semantic"] == 4 + 0 + 2


def test_task_iou_three_tasks_all_task_and_pairwise():
    t1 = {"backbone.a.weight": b(1, 1, 1, 0, 0, 0), "backbone.b.weight": b(1, 0, 0, 0)}
    t2 = {"backbone.a.weight": b(1, 1, 0, 1, 0, 0), "backbone.b.weight": b(0, 0, 0, 0)}
    t3 = {"backbone.a.weight": b(1, 0, 1, 1, 0, 0), "backbone.b.weight": b(0, 0, 0, 0)}
    frame = task_iou({"t1": t1, "t2": t2, "t3": t3}).set_index("layer")
    # Layer a: all three keep only position 0 → ∩ = 1; someone keeps 0..3 → ∪ = 4 → 0.25.
    # Each pair shares 2 of 4 positions ({0,1}, {0,2}, {0,3}) → pairwise 0.5 each, mean 0.5.
    # (The reference's 5-task quirk, "exactly 2 agree", would count positions 1, 2, 3: not reproduced.)
    assert frame.loc["backbone.a.weight", "iou"] == pytest.approx(0.25)
    assert frame.loc["backbone.a.weight", "mean_pairwise_iou"] == pytest.approx(0.5)
    # Layer b: ∩ = 0, ∪ = 1 → 0. Pairs (t1,t2) = 0/1, (t1,t3) = 0/1, (t2,t3) = 0/0 undefined → mean of 0, 0.
    assert frame.loc["backbone.b.weight", "iou"] == 0.0
    assert frame.loc["backbone.b.weight", "mean_pairwise_iou"] == 0.0
    # Overall: ∩ = 1 + 0, ∪ = 4 + 1 → 0.2; pairs pooled: (t1,t2) 2/5, (t1,t3) 2/5, (t2,t3) 2/4 → mean 13/30.
    assert frame.loc[OVERALL, "iou"] == pytest.approx(0.2)
    assert frame.loc[OVERALL, "mean_pairwise_iou"] == pytest.approx((0.4 + 0.4 + 0.5) / 3)


def test_task_iou_rejects_one_task_and_mismatched_layers():
    one = {"backbone.a.weight": b(1, 0)}
    with pytest.raises(ValueError, match="at least 2 tasks"):
        task_iou({"t1": one})
    with pytest.raises(ValueError, match=r"only in task 't2': \['backbone.z.weight'\]"):
        task_iou({"t1": one, "t2": {**one, "backbone.z.weight": b(1)}})
    with pytest.raises(ValueError, match="'backbone.a.weight' has shape"):
        task_iou({"t1": one, "t2": {"backbone.a.weight": b(1, 0, 1)}})


def test_mask_overlap_hand_example_and_layout_errors():
    a = {
        "backbone.x.weight": b(1, 1, 0, 0),
        "backbone.y.weight": np.zeros((2, 2), bool),
        "heads.n.z.weight": b(1, 1, 1),
    }
    bm = {
        "backbone.x.weight": b(1, 0, 1, 0),
        "backbone.y.weight": np.zeros((2, 2), bool),
        "heads.n.z.weight": b(1, 1, 1),
    }
    frame = mask_overlap(a, bm).set_index("layer")
    assert frame.loc["backbone.x.weight", "jaccard"] == pytest.approx(1 / 3)  # ∩ {0} = 1, ∪ {0,1,2} = 3
    assert math.isnan(frame.loc["backbone.y.weight", "jaccard"])  # neither keeps anything
    assert frame.loc["heads.n.z.weight", "jaccard"] == 1.0
    assert frame.loc["heads.n.z.weight", "component"] == "head/n"
    # Overall: ∩ = 1 + 0 + 3 = 4, ∪ = 3 + 0 + 3 = 6.
    assert frame.loc[OVERALL, "jaccard"] == pytest.approx(4 / 6)
    assert (frame.loc[OVERALL, "kept_a"], frame.loc[OVERALL, "kept_b"]) == (5, 5)
    with pytest.raises(ValueError, match=r"only in run a: \['heads.n.z.weight'\]"):
        mask_overlap(a, {k: v for k, v in bm.items() if k != "heads.n.z.weight"})
    with pytest.raises(ValueError, match=r"'backbone.x.weight' has shape \(4,\) in run a but \(2, 2\)"):
        mask_overlap(a, {**bm, "backbone.x.weight": np.ones((2, 2), bool)})


def test_missing_mask_files_name_the_run_and_file(tmp_path):
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"run abc: no masks\.npz"):
        load_masks(tmp_path, "abc")
    with pytest.raises(FileNotFoundError, match=r"run abc: no task_masks\.npz.*per task"):
        load_task_masks(tmp_path, "abc")


def _assert_figure(fig, xlabel: str, ylabel: str, stem: Path) -> None:
    assert fig.axes[0].get_xlabel() == xlabel and fig.axes[0].get_ylabel() == ylabel
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """A real store: one tiny dense stage, magnitude and random at 70% (about 10 s on a CPU)."""
    import torch

    from mtlprune.execution.matrix import run_matrix
    from mtlprune.store import Store
    from tests.helpers import tiny_matrix

    root = tmp_path_factory.mktemp("store")
    # One intra-op thread: on a shared 2-core machine, more threads wait on each other far more than
    # they gain. run_matrix sets it process-wide, so the previous count is restored afterwards.
    runtime = {"device": "cpu", "num_threads": 1}
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}, {"name": "random"}], sparsities=[0.7], runtime=runtime
    )
    threads = torch.get_num_threads()
    try:
        outcome = run_matrix(matrix, Store(root), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not outcome.failed, outcome.failed
    return root


@pytest.mark.slow
def test_overlap_matrix_on_a_real_store(tiny_store):
    frame = load_results(tiny_store)
    matrix = overlap_matrix(tiny_store, frame, 0.7)
    assert list(matrix.index) == list(matrix.columns) == ["magnitude", "random"]
    np.testing.assert_array_equal(np.diag(matrix.to_numpy()), [1.0, 1.0])
    np.testing.assert_array_equal(matrix.to_numpy(), matrix.to_numpy().T)
    ids = frame.set_index("method")["run_id"]
    mag, rnd = (np.load(tiny_store / "runs" / ids[m] / "masks.npz") for m in ("magnitude", "random"))
    # Direct NumPy, independent of mtlprune.store.maskio's reader: unpack every tensor's bits, pool, Jaccard.
    names = [str(n) for n in mag["names"]]
    assert names == [str(n) for n in rnd["names"]]

    def flat(archive) -> np.ndarray:
        return np.concatenate(
            [
                np.unpackbits(archive[f"bits_{i}"], count=int(np.prod(archive[f"shape_{i}"]))).astype(bool)
                for i in range(len(names))
            ]
        )

    x, y = flat(mag), flat(rnd)
    assert matrix.loc["magnitude", "random"] == pytest.approx((x & y).sum() / (x | y).sum())
    assert 0.0 < matrix.loc["magnitude", "random"] < 1.0
    assert matrix.attrs["target_sparsity"] == 0.7 and matrix.attrs["dataset"] == "nyuv2"
    with pytest.raises(ValueError, match="no done cell at target sparsity 0.5"):
        overlap_matrix(tiny_store, frame, 0.5)
    with pytest.raises(ValueError, match="no done cell"):
        overlap_matrix(tiny_store, frame, 0.7, seed=1)


@pytest.mark.slow
def test_figures_from_a_real_store(tiny_store, tmp_path):
    frame = load_results(tiny_store)
    ids = frame.set_index("method")["run_id"]
    masks = load_masks(tiny_store, ids["magnitude"])
    fig = layer_sparsity_heatmap(masks, out_stem=tmp_path / "sparsity")
    _assert_figure(
        fig, "Component (overall sparsity)", "Depth within component (layer order)", tmp_path / "sparsity"
    )
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].get_xticklabels()] == [
        "backbone", "Seg head", "Normal head", "Depth head"
    ]  # fmt: skip

    # Per-task masks written by hand: three tasks that keep different backbone weights.
    random_masks = load_masks(tiny_store, ids["random"])
    task_masks = {
        "segment_semantic": masks,
        "normal": random_masks,
        "depth_zbuffer": {n: m | random_masks[n] for n, m in masks.items()},
    }
    write_task_masks(tiny_store / "runs" / ids["magnitude"] / TASK_MASKS, task_masks)
    iou = task_iou(load_task_masks(tiny_store, ids["magnitude"]))
    assert (iou["layer"] != OVERALL).sum() == sum(n.startswith("backbone.") for n in masks)
    fig = task_iou_curve(iou, out_stem=tmp_path / "iou")
    _assert_figure(fig, "Backbone layer (depth order)", "IoU of the tasks' keep-masks", tmp_path / "iou")
    assert len(fig.axes[0].get_lines()) == 2  # 3 tasks: all-task IoU and the mean pairwise IoU

    fig = overlap_heatmap(overlap_matrix(tiny_store, frame, 0.7), out_stem=tmp_path / "overlap")
    _assert_figure(fig, "Method", "Method", tmp_path / "overlap")


@pytest.mark.slow
def test_mask_analytics_never_import_torch(tiny_store):
    run_id = load_results(tiny_store)["run_id"].iloc[0]
    code = (
        "import sys; from mtlprune.analysis import load_masks, layer_sparsity; "
        "from mtlprune.analysis.mask_figures import layer_sparsity_heatmap; "
        f"layer_sparsity_heatmap(load_masks({str(tiny_store)!r}, {run_id!r})); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
