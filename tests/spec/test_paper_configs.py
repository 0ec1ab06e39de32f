"""The AdapMTL paper-setting configs load, describe the paper's setting, and plan without the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlprune.cli import main
from mtlprune.engine.requirements import requirements
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

    lines = requirements(matrix)
    assert "NYUV2_ROOT" in lines[0] and "MISSING" in lines[0]
    assert f"{params} parameters, {prunable} prunable" in lines[1]
    assert main(["plan", str(CONFIGS / config), "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "What the run needs" in out and "export NYUV2_ROOT" in out

    monkeypatch.setenv("NYUV2_ROOT", str(tmp_path / "nyu"))
    assert "nyu_v2_3task.json does not exist" in requirements(matrix)[0]


def test_env_root_resolves_to_a_dataset_root(synthetic_root, monkeypatch):
    monkeypatch.setenv("NYUV2_ROOT", str(synthetic_root))
    matrix = load_matrix(CONFIGS / "adapmtl_nyuv2_resnet34.yaml")
    assert matrix.datasets[0].resolved_root() == synthetic_root
    assert requirements(matrix)[0] == f"data nyuv2: {synthetic_root} (found nyu_v2_3task.json)"
