"""Masks: exact-target selection from scores, application, and sparsity counted from the weights.

Achieved sparsity is always measured by counting zeros in the weights themselves, never taken from what a
method says it did. Selection prunes exactly round(target · n) weights (ties broken by position), so the
achieved sparsity equals the target to within one weight per scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

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
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))


def sparsity_report(model: MTLModel, requested: float = 0.0) -> dict[str, Any]:
    """Zeros counted in the weights: overall prunable, per component, per task path, per layer, all params.

    Flat scalar keys become `load_results()` columns; ``layers`` (per prunable tensor) stays in result.json.
    """
    params = model.prunable_parameters()
    zeros: dict[str, int] = {}
    total: dict[str, int] = {}
    layers: dict[str, dict[str, Any]] = {}
    for name, p in params.items():
        component = model.component_of(name)
        z, n = int((p.detach() == 0).sum()), p.numel()
        layers[name] = {"component": component, "params": n, "zeros": z, "sparsity": z / n}
        for key in ("overall", component):
            zeros[key] = zeros.get(key, 0) + z
            total[key] = total.get(key, 0) + n
    all_params = [p.detach() for p in model.parameters()]
    all_total = sum(p.numel() for p in all_params)
    all_zeros = sum(int((p == 0).sum()) for p in all_params)
    achieved = zeros["overall"] / total["overall"]
    report: dict[str, Any] = {
        "achieved_sparsity": achieved,
        "requested_sparsity": requested,
        "sparsity_gap": achieved - requested,
        "prunable_params": total["overall"],
        "prunable_nonzero": total["overall"] - zeros["overall"],
        "params_total": all_total,
        "params_nonzero": all_total - all_zeros,
        "sparsity.all_params": all_zeros / all_total,
        "sparsity.backbone": zeros["backbone"] / total["backbone"],
    }
    for task in model.tasks:
        head = f"head/{task}"
        report[f"sparsity.head.{task}"] = zeros[head] / total[head]
        report[f"sparsity.path.{task}"] = (zeros["backbone"] + zeros[head]) / (
            total["backbone"] + total[head]
        )
    report["layers"] = layers
    return report
