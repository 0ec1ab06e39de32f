"""The AdapMTL paper-setting configs load, describe the paper's setting, and plan without the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlprune.cli import main
from mtlprune.engine.requirements import data_needs, model_sizes
from mtlprune.spec import load_matrix

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("config", "arch", "params", "prunable"),
    [
        # Full-width parameter counts (the AdapMTL reference's: 156.5M and 90.65M pruned weights).
        ("adapmtl_nyuv2_mobilenetv2.yaml", "mobilenetv2", "156.57M", "156.51M"),
        ("adapmtl_nyuv2_resnet34.yaml", "deeplab_resnet34", "90.70M", "90.65M"),
    ],
)
def test_paper_config_plans_without_data(config, arch, params, prunable, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NYUV2_ROOT", raising=False)
    matrix = load_matrix(CONFIGS / config)
    (data,) = matrix.datasets
    assert data.source == "disk" and data.root == "${NYUV2_ROOT}" and data.crop == (321, 321)
    assert data.tasks == ("segment_semantic", "normal", "depth_zbuffer")
    assert [a.name for a in matrix.archs] == [arch] and matrix.archs[0].width == 1.0
    assert matrix.sparsities == [0.9] and matrix.eval.protocol == "adapmtl"
    # The Table 2 rows: SNIP, LTH, IMP, DiSparse, AdapMTL w/o adaptive thresholds, AdapMTL (+ magnitude).
    assert [m.name for m in matrix.methods] == [
        "snip", "lth", "imp", "magnitude", "disparse-dynamic", "adapmtl-single-threshold", "adapmtl"
    ]  # fmt: skip
    lth = matrix.methods[1].parsed_params()
    assert (lth.rewind, lth.rate) == ("init", 0.9)  # AdapMTL's one-shot "LTH": reset to init
    assert matrix.eval.effective_batch_size == 16
    t = matrix.train
    assert (t.steps, t.batch_size, t.optimizer, t.lr, t.betas) == (20000, 16, "adam", 1e-3, (0.5, 0.999))
    assert (t.lr_schedule, t.lr_step, t.lr_gamma) == ("step", 4000, 0.5)

    (need,) = data_needs(matrix).values()
    assert "NYUV2_ROOT" in need.problem and need.found is None
    assert need.expected == {"train": 795, "test": 654}  # the paper's split, shown beside what is found
    (size,) = model_sizes(matrix).values()
    assert (f"{size.total / 1e6:.2f}M", f"{size.total_prunable / 1e6:.2f}M") == (params, prunable)
    assert main(["plan", str(CONFIGS / config), "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "What the run needs" in out and "export NYUV2_ROOT" in out
    assert f"{params} parameters, {prunable} prunable" in out and "expected 795 train / 654 test" in out
    # 20k dense steps; cells: snip and disparse-dynamic from init 40k each, IMP 11 rounds × 2000, the rest
    # (LTH one round of T, magnitude, both AdapMTL rows, the control) 20k each.
    assert "steps: 222,000 optimizer steps in all: 20,000 in 1 dense stage(s), 202,000 in 8 cell(s)" in out

    monkeypatch.setenv("NYUV2_ROOT", str(tmp_path / "nyu"))
    (need,) = data_needs(matrix).values()
    assert "nyu_v2_3task.json does not exist" in need.problem


def test_env_root_resolves_to_a_dataset_root(synthetic_root, monkeypatch):
    monkeypatch.setenv("NYUV2_ROOT", str(synthetic_root))
    matrix = load_matrix(CONFIGS / "adapmtl_nyuv2_resnet34.yaml")
    assert matrix.datasets[0].resolved_root() == synthetic_root
    (need,) = data_needs(matrix).values()
    assert (need.root, need.problem, need.found) == (str(synthetic_root), None, {"train": 8, "test": 4})
    assert need.mismatches() == ["train: found 8, expected 795", "test: found 4, expected 654"]


def test_ecs_paper_config_plans_without_data(tmp_path, monkeypatch, capsys):
    """ViT-B/16 at 416×416 on NYU-v2, segmentation the base: the ECS paper's shape, planned here."""
    monkeypatch.delenv("NYUV2_ROOT", raising=False)
    matrix = load_matrix(CONFIGS / "ecs_nyuv2_vitb16.yaml")
    (data,) = matrix.datasets
    assert data.crop == (416, 416) and data.tasks[0] == "segment_semantic"
    (arch,) = matrix.archs
    assert (arch.name, arch.width, arch.head_width) == ("vit_b16_convnext", 1.0, 1.0)
    ecs = matrix.methods[0].parsed_params()
    assert (matrix.methods[0].name, ecs.base, ecs.control) == ("ecs", "single_task", "target")
    # The multi-task dense stage every pruning method starts from; ECS's single-task base (segmentation),
    # which is also the segmentation model of `stl_reference`; the other tasks' single-task models.
    dense = matrix.dense_stages()
    assert matrix.stl_reference
    assert sorted(d.data.tasks for d in dense) == sorted([data.tasks, *((t,) for t in data.tasks)])
    sizes = model_sizes(matrix)
    totals = sorted(f"{s.total / 1e6:.2f}M" for s in sizes.values())
    # 85.65M ViT-B/16 + heads: 2.98M (E 3072, segmentation), 1.34M (E 1536, normals and depth)
    assert totals == ["86.99M", "86.99M", "88.63M", "91.31M"]
    assert main(["plan", str(CONFIGS / "ecs_nyuv2_vitb16.yaml"), "--store", str(tmp_path)]) == 0
    assert "vit_b16_convnext width 1/1" in capsys.readouterr().out


def test_ecs_demo_config_validates_on_the_cpu_vit():
    matrix = load_matrix(CONFIGS / "demo_ecs.yaml")
    assert [m.name for m in matrix.methods] == [
        "ecs",
        "ecs-weights",
        "magnitude",
        "adapmtl",
        "disparse-static",
    ]
    assert [a.name for a in matrix.archs] == ["vit_t_convnext"] and matrix.sparsities == [0.5, 0.9]
    assert len(matrix.expand()) == 11  # 5 methods × 2 targets + control
    # the multi-task dense stage and one single-task stage per task (segmentation's is ECS's base)
    assert len(matrix.dense_stages()) == 4
