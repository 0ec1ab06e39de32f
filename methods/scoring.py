"""Helpers shared by methods that score weights with gradients (SNIP, GraSP, SynFlow, DiSparse)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def scoring_copy(model: nn.Module) -> nn.Module:
    """A deep copy in train mode (BN batch statistics) with dropout off: deterministic, original untouched."""
    net = copy.deepcopy(model)
    net.train()
    for module in net.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.eval()
    return net


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
