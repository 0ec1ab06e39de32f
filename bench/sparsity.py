"""Masks: exact-target selection from scores, application, and sparsity counted from the weights.

Achieved sparsity is always measured by counting zeros in the weights themselves, never taken from what a
method says it did. Selection prunes exactly round(target · n) weights (ties broken by position), so the
achieved sparsity equals the target to within one weight per scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from bench.models.mtl import MTLModel

Scope = Literal["global", "layer"]
Masks = dict[str, Tensor]


def _prune_lowest(flat_scores: Tensor, n_prune: int) -> Tensor:
    """Boolean keep-mask over a flat score vector with exactly `n_prune` lowest entries removed."""
    keep = torch.ones_like(flat_scores, dtype=torch.bool)
    if n_prune > 0:
        # Stable sort: equal scores are pruned in position order, so selection is deterministic.
        order = torch.sort(flat_scores.float(), stable=True).indices
        keep[order[:n_prune]] = False
    return keep


def select_masks(scores: Mapping[str, Tensor], target: float, scope: Scope = "global") -> Masks:
    """Keep-masks (True = kept) that remove the lowest-scoring fraction `target` of weights."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if not scores:
        raise ValueError("no scores given: the model has no prunable parameters?")
    for name, s in scores.items():
        if not torch.isfinite(s).all():
            raise ValueError(f"scores for {name!r} contain NaN or inf")
    if scope == "layer":
        return {
            name: _prune_lowest(s.detach().flatten(), round(target * s.numel())).view_as(s)
            for name, s in scores.items()
        }
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}; allowed: 'global', 'layer'")
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float().cpu() for n in names])
    keep = _prune_lowest(flat, round(target * flat.numel()))
    masks, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset : offset + n].view_as(scores[name]).to(scores[name].device)
        offset += n
    return masks


@torch.no_grad()
def apply_masks(params: Mapping[str, nn.Parameter], masks: Masks) -> None:
    """Zero every pruned weight in place."""
    missing = set(masks) - set(params)
    if missing:
        raise KeyError(f"masks name parameters the model does not have: {sorted(missing)[:3]}")
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def sparsity_report(model: MTLModel) -> dict[str, float | int]:
    """Zeros over prunable weights: overall, per component, per task path; plus the counts."""
    params = model.prunable_parameters()
    zeros: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, p in params.items():
        component = model.component_of(name)
        z = int((p.detach() == 0).sum())
        for key in ("overall", component):
            zeros[key] = zeros.get(key, 0) + z
            total[key] = total.get(key, 0) + p.numel()
    report: dict[str, float | int] = {
        "achieved_sparsity": zeros["overall"] / total["overall"],
        "prunable_params": total["overall"],
        "nonzero_params": total["overall"] - zeros["overall"],
    }
    for component in model.components():
        report[f"sparsity.{component}"] = zeros[component] / total[component]
    for task in model.tasks:
        head = f"head/{task}"
        z, n = zeros["backbone"] + zeros[head], total["backbone"] + total[head]
        report[f"sparsity.path/{task}"] = z / n
    return report
