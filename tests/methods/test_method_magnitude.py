"""Mask-selection scopes (component, ERK, iterative) and one-shot magnitude, checked independently."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mtlprune.engine.sparsity import erk_densities, select_masks
from mtlprune.registry import ARCHS


def _model():
    torch.manual_seed(0)
    model = ARCHS.get("deeplab_resnet34")(
        {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}, width=0.125, head_width=0.03125
    )
    with torch.no_grad():  # continuous random weights: no ties, so any correct ranking agrees
        for p in model.prunable_parameters().values():
            p.copy_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_global_magnitude_masks_equal_torch_prune_global_unstructured(target):
    model = _model()
    scores = {n: p.detach().abs() for n, p in model.prunable_parameters().items()}
    ours = select_masks(scores, target, "global")

    twin = copy.deepcopy(model)
    modules = {name: m for name, m in twin.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    prune.global_unstructured(
        [(m, "weight") for m in modules.values()], pruning_method=prune.L1Unstructured, amount=target
    )
    for name, module in modules.items():
        assert torch.equal(ours[f"{name}.weight"], module.weight_mask.bool()), name


def test_component_scope_prunes_backbone_and_each_head_to_the_target():
    model = _model()
    scores = {n: p.detach().abs() for n, p in model.prunable_parameters().items()}
    masks = select_masks(scores, 0.8, "component", component_of=model.component_of)
    per_component: dict[str, list[int]] = {}
    for name, mask in masks.items():
        counts = per_component.setdefault(model.component_of(name), [0, 0])
        counts[0] += int((~mask).sum())
        counts[1] += mask.numel()
    assert set(per_component) == {"backbone", "head/segment_semantic", "head/normal", "head/depth_zbuffer"}
    for pruned, total in per_component.values():
        assert pruned == round(0.8 * total)
    # Within a component the ranking is by magnitude: every kept |w| >= every pruned |w| of that component.
    for component in per_component:
        names = [n for n in masks if model.component_of(n) == component]
        kept = torch.cat([scores[n][masks[n]] for n in names])
        pruned = torch.cat([scores[n][~masks[n]] for n in names])
        assert kept.min() >= pruned.max()
    with pytest.raises(ValueError, match="component_of"):
        select_masks(scores, 0.8, "component")


def test_erk_densities_match_the_formula_by_hand():
    # conv a: (8, 4, 3, 3) → 288 weights, raw (8+4+3+3)/288 = 18/288 = 0.0625
    # conv b: (2, 2, 1, 1) → 4 weights, raw 6/4 = 1.5
    # target 0.5 keeps 146 of 292. ε over both: 146 / (0.0625·288 + 1.5·4) = 146 / 24 = 6.083 → b would be
    # 9.1 > 1, so b is dense (4 kept) and ε is solved again over a alone: (146 − 4) / (0.0625·288) = 142/18.
    # density a = ε · 0.0625 = 142/288.
    shapes = {"a": (8, 4, 3, 3), "b": (2, 2, 1, 1)}
    densities = erk_densities(shapes, 0.5)
    assert densities["b"] == 1.0
    assert densities["a"] == pytest.approx(142 / 288)
    # Without capping, densities are proportional to the raw ERK ratio.
    shapes = {"a": (8, 4, 3, 3), "c": (16, 8, 3, 3)}
    densities = erk_densities(shapes, 0.9)
    raw = {"a": 18 / 288, "c": 30 / 1152}
    assert densities["a"] / densities["c"] == pytest.approx(raw["a"] / raw["c"])
    kept = densities["a"] * 288 + densities["c"] * 1152
    assert kept == pytest.approx(0.1 * (288 + 1152))


def test_erk_scope_hits_the_exact_total_with_erk_layer_counts():
    model = _model()
    scores = {n: p.detach().abs() for n, p in model.prunable_parameters().items()}
    masks = select_masks(scores, 0.9, "erk")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    densities = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, 0.9)
    for name, mask in masks.items():  # each layer within one weight of its ERK share
        assert abs(int(mask.sum()) - densities[name] * mask.numel()) <= 1.0 + 1e-9, name


def test_iterative_selection_keeps_pruned_weights_pruned():
    scores = {"a": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])}
    first = select_masks(scores, 0.4)  # prunes 1.0 and 2.0
    assert first["a"].tolist() == [True, False, True, False, True]
    # New scores would revive index 1, but it is already pruned: the next 20% (one weight) goes from the rest.
    rescored = {"a": torch.tensor([5.0, 9.0, 0.5, 2.0, 3.0])}
    second = select_masks(rescored, 0.6, current=first)
    assert second["a"].tolist() == [True, False, False, False, True]


@pytest.mark.slow
def test_magnitude_component_scope_end_to_end(tmp_path):
    from mtlprune.execution.matrix import run_matrix
    from mtlprune.store import Store
    from tests.helpers import tiny_matrix

    matrix = tiny_matrix(methods=[{"name": "magnitude", "params": {"scope": "component"}}], sparsities=[0.8])
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    report = store.result(matrix.expand()[0].run_id).sparsity
    for key in ("sparsity.backbone", "sparsity.head.segment_semantic", "sparsity.head.normal"):
        assert math.isclose(report[key], 0.8, abs_tol=1e-3), key
