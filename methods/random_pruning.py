"""Random pruning: the floor every real method must beat, after training (``start: dense``) or at
initialisation (``start: init``, DiSparse's "static random" baseline).

Scores are i.i.d. uniform from the cell's seeded generator, so the mask is a uniformly random subset of the
size the scope prescribes. ``scope: global`` ranks every prunable weight together (each layer at the target
in expectation), ``scope: layer`` prunes every layer exactly to the target (uniform), ``scope: erk`` uses the
Erdős–Rényi-Kernel layer densities of RigL (Evci et al., ICML 2020, arXiv 1911.11134), per-layer counts
rounded so the total is exact. Random pruning at initialisation with ERK densities is the strong baseline of
Liu et al., "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive Baseline for Sparse
Training", ICLR 2022 (arXiv 2202.02643).

``start: dense`` (default) prunes the trained dense model and finetunes on the cell's finetune budget;
``start: init`` prunes the shared initialisation and trains on the at-init budget
(``ctx.sparse_training_spec()``: dense + finetune steps on the dense recipe). Deviations: none beyond the
benchmark's fixed budgets (Liu et al. train longer schedules) and uniform ``layer`` keeping every layer,
first included, at the target (no dense first layer).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mtlprune.engine.context import MethodContext
from mtlprune.methods.base import MethodParams, OneShotMethod
from mtlprune.registry import METHODS


class RandomParams(MethodParams):
    scope: Literal["global", "layer", "erk"] = Field(
        "global", description="one global ranking, every layer at the target, or ERK layer densities"
    )
    start: Literal["dense", "init"] = Field(
        "dense", description="prune the trained dense model then finetune, or prune at init then train"
    )


@METHODS.register("random")
class RandomPruning(OneShotMethod):
    """Random pruning to the target (global, uniform or ERK), of the dense model or at init: the floor."""

    Params = RandomParams
    starts_from = "dense"

    def __init__(self, params: RandomParams) -> None:  # type: ignore[override]
        super().__init__(params)
        self.starts_from = params.start  # the params choose (the class's value is the default)

    def scores(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        generator = ctx.generator()
        return {name: torch.rand(p.shape, generator=generator) for name, p in ctx.prunable().items()}
