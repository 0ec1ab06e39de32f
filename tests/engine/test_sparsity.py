"""Exact-target mask selection and sparsity counted from the weights (golden cases)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import apply_masks, select_masks, sparsity_report


def test_global_selection_removes_exactly_the_lowest_scores():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5]), "b": torch.tensor([[0.3, 0.7], [0.2, 0.8]])}
    masks = select_masks(scores, target=3 / 7)  # round(3/7 · 7) = 3 pruned: 0.1, 0.2, 0.3
    assert masks["a"].tolist() == [False, True, True]
    assert masks["b"].tolist() == [[False, True], [False, True]]


def test_ties_are_pruned_in_position_order():
    scores = {"a": torch.zeros(4), "b": torch.zeros(4)}
    masks = select_masks(scores, target=0.25)  # 2 of 8 pruned, both ties at 0: the first two positions
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].all()


def test_layer_scope_prunes_each_layer_to_the_target():
    scores = {"a": torch.arange(10.0), "b": torch.arange(20.0).flip(0)}
    masks = select_masks(scores, target=0.3, scope="layer")
    assert masks["a"].tolist() == [False] * 3 + [True] * 7
    assert int((~masks["b"]).sum()) == 6 and not masks["b"][-6:].any()


@pytest.mark.parametrize("target", [0.0, 0.5, 0.7, 0.9, 0.99])
def test_global_selection_hits_the_target_within_one_weight(target):
    gen = torch.Generator().manual_seed(0)
    scores = {f"l{i}": torch.rand(n, generator=gen) for i, n in enumerate([17, 300, 4096, 1])}
    masks = select_masks(scores, target)
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert abs(pruned - target * total) <= 0.5


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"target sparsity must be in \[0, 1\), got 1.0"):
        select_masks({"a": torch.ones(3)}, 1.0)
    with pytest.raises(ValueError, match="scores for 'a' contain NaN"):
        select_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="unknown scope 'heads'"):
        select_masks({"a": torch.ones(3)}, 0.5, scope="heads")  # type: ignore[arg-type]


def _toy_model() -> MTLModel:
    backbone = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))  # 2 prunable weights
    heads = {"a": nn.Conv2d(2, 3, 1), "b": nn.Conv2d(2, 1, 1)}  # 6 and 2 prunable weights; biases excluded
    model = MTLModel(backbone, heads)
    for p in model.parameters():
        nn.init.constant_(p, 1.0)
    return model


def test_sparsity_report_counts_zeros_per_component_and_task_path():
    model = _toy_model()
    params = model.prunable_parameters()
    assert sorted(params) == ["backbone.0.weight", "heads.a.weight", "heads.b.weight"]
    with torch.no_grad():
        params["backbone.0.weight"].view(-1)[0] = 0  # backbone 1/2
        params["heads.a.weight"].view(-1)[:3] = 0  # head a 3/6
        model.heads["a"].bias.zero_()  # biases never count
    report = sparsity_report(model, requested=0.5)
    assert report["achieved_sparsity"] == pytest.approx(4 / 10)
    assert report["requested_sparsity"] == 0.5 and report["sparsity_gap"] == pytest.approx(-0.1)
    assert report["prunable_params"] == 10 and report["prunable_nonzero"] == 6
    assert report["sparsity.backbone"] == pytest.approx(1 / 2)
    assert report["sparsity.head.a"] == pytest.approx(3 / 6)
    assert report["sparsity.head.b"] == 0.0
    assert report["sparsity.path.a"] == pytest.approx(4 / 8)  # backbone + head a
    assert report["sparsity.path.b"] == pytest.approx(1 / 4)  # backbone + head b
    # All parameters: 2 conv + 4 BN + (6 + 3) head a + (2 + 1) head b = 18; zeros: 1 + 3 + 3 biases = 7.
    assert report["params_total"] == 18 and report["params_nonzero"] == 11
    assert report["sparsity.all_params"] == pytest.approx(7 / 18)
    assert report["layers"]["heads.a.weight"] == {
        "component": "head/a",
        "params": 6,
        "zeros": 3,
        "sparsity": 0.5,
    }
    assert set(report["layers"]) == set(model.prunable_parameters())


def test_apply_masks_zeroes_and_rejects_unknown_names():
    model = _toy_model()
    params = model.prunable_parameters()
    apply_masks(params, {"heads.b.weight": torch.tensor([[[[True]], [[False]]]])})
    assert params["heads.b.weight"].flatten().tolist() == [1.0, 0.0]
    with pytest.raises(KeyError, match="nope"):
        apply_masks(params, {"nope": torch.ones(1, dtype=torch.bool)})


def test_component_and_task_path_from_structure():
    model = _toy_model()
    assert model.component_of("backbone.0.weight") == "backbone"
    assert model.component_of("heads.b.weight") == "head/b"
    assert model.task_path("backbone.0.weight") == ("a", "b") and model.task_path("heads.a.bias") == ("a",)
    with pytest.raises(KeyError, match="belongs to no component"):
        model.component_of("other.weight")
