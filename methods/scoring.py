"""Helpers shared by methods that score weights with gradients (SNIP, GraSP, SynFlow, DiSparse).

The scoring model itself comes from ``mtlprune.engine.context.scoring_copy`` (``ctx.scoring_copy()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def weight_grads(
    loss: Tensor, weights: Sequence[Tensor], *, retain_graph: bool = False, create_graph: bool = False
) -> list[Tensor]:
    """∂loss/∂w for each weight; zeros for a weight the loss does not depend on."""
    if not loss.requires_grad:
        return [torch.zeros_like(w) for w in weights]
    found = torch.autograd.grad(
        loss,
        list(weights),
        retain_graph=retain_graph or create_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(w) if g is None else g for g, w in zip(found, weights, strict=True)]
