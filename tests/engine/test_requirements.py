"""What `mtlprune plan` gathers from the plugins: parameter splits, sample counts, planned steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtlprune.engine.requirements import data_needs, model_size, model_sizes, planned_stages
from mtlprune.plan.compute import StepTime, compute_plan, gpu_hours
from mtlprune.plan.stages import plan
from mtlprune.registry import DATASETS
from mtlprune.spec import load_matrix
from tests.helpers import tiny_matrix

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _millions(n: int) -> float:
    return round(n / 1e6, 2)


def test_resnet34_split_matches_the_adapmtl_reference_counts():
    matrix = load_matrix(CONFIGS / "adapmtl_nyuv2_resnet34.yaml")
    size = model_size(matrix.dense_stages()[0])
    # AdapMTL's pruned conv weights (its report, cross-checked with its logs): 21.27M backbone, heads of
    # 23.23M (40-class segmentation), 23.08M (normals), 23.07M (depth)
    assert {c: _millions(n) for c, n in size.prunable.items()} == {
        "backbone": 21.27, "head/segment_semantic": 23.23, "head/normal": 23.08, "head/depth_zbuffer": 23.07,
    }  # fmt: skip
    assert size.parameters == {
        "backbone": 21_284_672, "head/segment_semantic": 23_240_864, "head/normal": 23_089_164,
        "head/depth_zbuffer": 23_080_964,
    }  # fmt: skip
    assert size.total == 90_695_664 and round(100 * size.heads_share, 1) == 76.5
    assert size.activations_per_sample is not None and size.activations_per_sample > 0


def test_mobilenetv2_is_almost_all_heads_by_design():
    # 156.6M parameters of which 154M are the three ASPP heads on MobileNetV2's 1280 channels: the reference's
    # architecture (98.6% heads), not a config error
    matrix = load_matrix(CONFIGS / "adapmtl_nyuv2_mobilenetv2.yaml")
    (size,) = model_sizes(matrix).values()
    assert _millions(size.parameters["backbone"]) == 2.22 and _millions(size.prunable["backbone"]) == 2.19
    assert _millions(size.heads) == 154.35 and round(100 * size.heads_share, 1) == 98.6
    assert [_millions(size.prunable[f"head/{t}"]) for t in size.tasks] == [51.54, 51.39, 51.38]


def test_the_resnet34_paper_config_plans_202k_cell_steps(monkeypatch):
    monkeypatch.delenv("NYUV2_ROOT", raising=False)
    matrix = load_matrix(CONFIGS / "adapmtl_nyuv2_resnet34.yaml")
    planned = planned_stages(plan(matrix))
    steps = {p.stage.spec.method.label if p.kind == "cell" else "dense": p.steps for p in planned}
    assert steps == {
        "dense": 20000,
        "snip": 40000,  # from init: dense + finetune
        "lth(rate=0.9,rewind=init)": 20000,  # one round, retrained T − 0 steps from θ0
        "imp(round_steps=2000)": 22000,  # 11 rounds of 20% to 90%, 2000 steps each
        "magnitude": 20000,
        "disparse-dynamic": 40000,
        "adapmtl-single-threshold": 20000,
        "adapmtl": 20000,
        "dense-finetune": 20000,
    }
    assert sum(p.steps for p in planned if p.kind == "cell") == 202_000
    kinds = {p.stage.spec.method.name: p.step_kind for p in planned if p.kind == "cell"}
    assert kinds["adapmtl"] == "adapmtl" and kinds["dense-finetune"] == "dense" and kinds["snip"] == "masked"
    quarter = StepTime(dict.fromkeys(("dense", "masked", "adapmtl"), 0.25), "x")
    costs = compute_plan(planned, step_time=quarter)
    # no sample counts given: training steps only, 222,000 × 0.25 s
    assert costs.pending_seconds == 55_500.0 and f"{gpu_hours(costs.pending_seconds):.2f}" == "15.42"


def test_counts_of_a_synthetic_and_a_disk_root(synthetic_root, tmp_path):
    assert DATASETS.get("nyuv2").count_samples(synthetic_root) == {"train": 8, "test": 4}
    disk = tiny_matrix(datasets=[{"dataset": "nyuv2", "tasks": ["segment_semantic"], "source": "disk",
                                  "root": str(synthetic_root)}])  # fmt: skip
    (need,) = data_needs(disk).values()
    assert need.found == {"train": 8, "test": 4} and need.expected == {"train": 795, "test": 654}
    assert "795/654" in need.reference
    (synthetic,) = data_needs(tiny_matrix()).values()
    assert synthetic.source == "synthetic"
    assert synthetic.found == synthetic.expected == {"train": 8, "test": 4}


def test_a_malformed_listing_is_reported_with_its_path(synthetic_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    listing = root / "nyu_v2_3task.json"
    data = json.loads(listing.read_text())
    listing.write_text(json.dumps({"train": data["train"]}))  # no test split
    matrix = tiny_matrix(datasets=[{"dataset": "nyuv2", "tasks": ["segment_semantic"], "source": "disk",
                                    "root": str(root)}])  # fmt: skip
    (need,) = data_needs(matrix).values()
    assert need.found is None and str(listing) in need.problem and "'test'" in need.problem


def test_taskonomy_publishes_no_frame_counts():
    cls = DATASETS.get("taskonomy")
    assert cls.expected_counts == {} and "25 train / 5 validation / 5 test buildings" in cls.expected_source


@pytest.mark.parametrize("name", ["nyuv2", "taskonomy"])
def test_count_samples_reads_only_the_listing(name, tmp_path):
    cls = DATASETS.get(name)
    root = cls.synthesize(tmp_path / name, n_train=3, n_test=2, height=16, width=16, seed=0)
    for path in root.iterdir():  # cheap on a real dataset: no sample file is opened
        if path.is_dir():
            shutil.rmtree(path)
    assert cls.count_samples(root) == {"train": 3, "test": 2}
