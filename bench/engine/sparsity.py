"""Masks: exact-target selection from scores, application, and sparsity counted from the weights.

Achieved sparsity is always measured by counting zeros in the weights themselves, never taken from what a
method says it did. Selection prunes exactly round(target · n) weights (ties broken by position), so the
achieved sparsity equals the target to within one weight per scope.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlprune.engine.models.delta import DeltaSharedMTL
from mtlprune.engine.models.mtl import MTLModel

Scope = Literal["global", "layer", "component", "erk"]
SCOPES: tuple[str, ...] = ("global", "layer", "component", "erk")
Masks = dict[str, Tensor]


def _prune_lowest(flat_scores: Tensor, n_prune: int) -> Tensor:
    """Boolean keep-mask over a flat score vector with exactly `n_prune` lowest entries removed."""
    keep = torch.ones_like(flat_scores, dtype=torch.bool)
    if n_prune > 0:
        # Stable sort: equal scores are pruned in position order, so selection is deterministic.
        order = torch.sort(flat_scores, stable=True).indices
        keep[order[:n_prune]] = False
    return keep


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]], target: float, power: float = 1.0
) -> dict[str, float]:
    """Per-layer densities of the Erdős–Rényi-Kernel distribution (Evci et al., RigL, ICML 2020).

    Layer l gets density ε·(Σ dims)/(Π dims) (n_out + n_in + k_h + k_w over n_out·n_in·k_h·k_w for a conv;
    n_out + n_in over n_out·n_in for a linear layer), with one ε for all layers solved so the total number
    of kept weights is (1 − target)·N. A layer whose density would exceed 1 is kept dense and ε is solved
    again over the others, until no layer exceeds 1. ``power`` raises each ratio to that power first (the
    DiSparse reference uses 0.9); 1 is RigL's ERK.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: (sum(shape) / sizes[name]) ** power for name, shape in shapes.items()}
    keep_total = (1.0 - target) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        budget = keep_total - sum(sizes[n] for n in dense)
        if not free:
            break
        epsilon = budget / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if epsilon * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else min(1.0, epsilon * raw[n]) for n in shapes}


def layer_prune_counts(
    sizes: Mapping[str, int], densities: Mapping[str, float], target: float
) -> dict[str, int]:
    """Weights to prune per layer from densities, rounded so the total is exactly round(target · N)."""
    total = sum(sizes.values())
    want = round(target * total)
    exact = {n: (1.0 - densities[n]) * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], math.floor(exact[n])) for n in sizes}
    # Largest remainders first (ties by name order) until the exact total is reached.
    order = sorted(sizes, key=lambda n: (-(exact[n] - counts[n]), list(sizes).index(n)))
    i = 0
    while sum(counts.values()) < want:
        n = order[i % len(order)]
        if counts[n] < sizes[n]:
            counts[n] += 1
        i += 1
    return counts


def select_masks(
    scores: Mapping[str, Tensor],
    target: float,
    scope: Scope = "global",
    component_of: Callable[[str], str] | None = None,
    current: Masks | None = None,
) -> Masks:
    """Keep-masks (True = kept) that remove the lowest-scoring fraction ``target`` of weights.

    ``scope``: ``global`` (one ranking over all weights), ``layer`` (every tensor at the target),
    ``component`` (the backbone and each head at the target; needs ``component_of``), or ``erk`` (per-tensor
    densities from :func:`erk_densities`). The total pruned is always exactly round(target · N) for
    ``global`` and ``erk``, round(target · n) per tensor for ``layer`` and per component for ``component``.
    ``current``: weights already pruned (False) stay pruned and count toward the target, so iterative
    methods can prune a further share of the survivors.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if not scores:
        raise ValueError("no scores given: the model has no prunable parameters?")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    ranked: dict[str, Tensor] = {}
    for name, s in scores.items():
        flat = s.detach().flatten().to(torch.float64).cpu()
        if not torch.isfinite(flat).all():
            raise ValueError(f"scores for {name!r} contain NaN or inf")
        ranked[name] = flat
    if current is not None:
        missing = set(scores) - set(current)
        if missing:
            raise KeyError(f"current masks lack tensors that have scores: {sorted(missing)[:3]}")
        floor = min(float(f.min()) for f in ranked.values()) - 1.0
        for name, flat in ranked.items():
            ranked[name] = torch.where(
                current[name].flatten().cpu().bool(), flat, torch.full_like(flat, floor)
            )
    if scope == "layer":
        flat_masks = {name: _prune_lowest(f, round(target * f.numel())) for name, f in ranked.items()}
    elif scope == "component":
        if component_of is None:
            raise ValueError("scope 'component' needs component_of (parameter name → component)")
        groups: dict[str, list[str]] = {}
        for name in ranked:
            groups.setdefault(component_of(name), []).append(name)
        flat_masks = {}
        for names in groups.values():
            flat_masks.update(_global(ranked, names, target))
    elif scope == "erk":
        shapes = {name: tuple(scores[name].shape) for name in ranked}
        counts = layer_prune_counts(
            {n: f.numel() for n, f in ranked.items()}, erk_densities(shapes, target), target
        )
        flat_masks = {name: _prune_lowest(f, counts[name]) for name, f in ranked.items()}
    else:
        flat_masks = _global(ranked, list(ranked), target)
    return {name: flat_masks[name].view(scores[name].shape).to(scores[name].device) for name in scores}


def _global(ranked: Mapping[str, Tensor], names: list[str], target: float) -> dict[str, Tensor]:
    """One ranking over the named tensors, exactly round(target · n) of them pruned."""
    flat = torch.cat([ranked[n] for n in names])
    keep = _prune_lowest(flat, round(target * flat.numel()))
    out, offset = {}, 0
    for name in names:
        n = ranked[name].numel()
        out[name] = keep[offset : offset + n]
        offset += n
    return out


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
    A delta-shared model (ECS) is reported on its own axis (:func:`delta_sparsity_report`).
    """
    if isinstance(model, DeltaSharedMTL):
        return delta_sparsity_report(model, requested)
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


def _zeros(t: Tensor) -> int:
    return t.numel() - int(torch.count_nonzero(t.detach()))


@torch.no_grad()
def delta_sparsity_report(model: DeltaSharedMTL, requested: float = 0.0) -> dict[str, Any]:
    """What a delta-shared model (ECS) stores, counted from its weights (docs/accounting.md).

    Its target is a delta sparsity: ``achieved_sparsity`` is the zeros of every sub-task's delta over their
    size, ``sparsity.delta.<task>`` each sub-task's (what the runner checks), ``params_delta.<task>`` and
    ``params_delta_nonzero.<task>`` its size and non-zeros. Stored parameters: ``params_stored`` = every
    parameter of the base backbone + Σ non-zeros of the deltas + every head parameter; the positions of the
    non-zeros cost one bit per delta entry, ``params_index_bits``, reported apart. ``sparsity.backbone`` and
    ``sparsity.head.<task>`` are the pruning sparsity of the base's and the heads' conv and linear weights
    (0 unless they hold zeros), ``sparsity.path.<task>`` that of the weights one task runs with (W_b + δ_t
    and its head); ``layers`` lists those weights (collapse is judged on them), ``delta_layers`` the deltas.
    """
    deltas = model.prunable_parameters()
    delta_layers: dict[str, dict[str, Any]] = {}
    zeros: dict[str, int] = {}
    size: dict[str, int] = {}
    for name, p in deltas.items():
        task = model.component_of(name).removeprefix("delta/")
        z, n = _zeros(p), p.numel()
        delta_layers[name] = {"component": f"delta/{task}", "params": n, "zeros": z, "sparsity": z / n}
        zeros[task] = zeros.get(task, 0) + z
        size[task] = size.get(task, 0) + n
    total_delta = sum(size.values())
    zeros_delta = sum(zeros.values())
    achieved = zeros_delta / total_delta if total_delta else 0.0
    base_params = sum(p.numel() for p in model.backbone.parameters())
    head_params = sum(p.numel() for p in model.heads.parameters())
    all_params = [p.detach() for p in model.parameters()]
    all_total = sum(p.numel() for p in all_params)
    all_zeros = sum(_zeros(p) for p in all_params)
    report: dict[str, Any] = {
        "axis": "delta",
        "achieved_sparsity": achieved,
        "requested_sparsity": requested,
        "sparsity_gap": achieved - requested,
        "prunable_params": total_delta,
        "prunable_nonzero": total_delta - zeros_delta,
        "params_total": all_total,
        "params_nonzero": all_total - all_zeros,
        "sparsity.all_params": all_zeros / all_total,
        "params_base": base_params,
        "params_heads": head_params,
        "params_stored": base_params + (total_delta - zeros_delta) + head_params,
        "params_index_bits": total_delta,
    }
    for task in model.sub_tasks:
        report[f"sparsity.delta.{task}"] = zeros[task] / size[task]
        report[f"params_delta.{task}"] = size[task]
        report[f"params_delta_nonzero.{task}"] = size[task] - zeros[task]
    # The pruning view of the weights each task runs with (conv and linear weights, as for every method).
    layers: dict[str, dict[str, Any]] = {}
    counts: dict[str, list[int]] = {}
    for name, p in model.base_prunable().items():
        component = model.component_of(name)
        z, n = _zeros(p), p.numel()
        layers[name] = {"component": component, "params": n, "zeros": z, "sparsity": z / n}
        counts.setdefault(component, [0, 0])
        counts[component][0] += z
        counts[component][1] += n
    report["sparsity.backbone"] = counts["backbone"][0] / counts["backbone"][1]
    prunable_backbone = {
        n.removeprefix("backbone.") for n in model.base_prunable() if n.startswith("backbone.")
    }
    for task in model.tasks:
        head_z, head_n = counts[f"head/{task}"]
        report[f"sparsity.head.{task}"] = head_z / head_n
        if task == model.base_task:
            path_z = counts["backbone"][0]
        else:
            base = dict(model.backbone.named_parameters())
            delta = model.delta(task)
            path_z = sum(_zeros(base[n] + delta[n]) for n in prunable_backbone)
        report[f"sparsity.path.{task}"] = (path_z + head_z) / (counts["backbone"][1] + head_n)
    report["layers"] = layers
    report["delta_layers"] = delta_layers
    return report
