"""Random pruning of the dense checkpoint, then finetuning: the floor every real method must beat.

Scores are i.i.d. uniform from the cell's seeded generator; ``scope: global`` keeps each layer at the target
in expectation, ``scope: layer`` exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.context import MethodContext
from bench.registry import METHODS
from methods.base import MethodParams, PruningMethod


class RandomParams(MethodParams):
    scope: Literal["global", "layer"] = Field("global", description="one global ranking or one per layer")


@METHODS.register("random")
class RandomPruning(PruningMethod):
    """Random pruning of the dense model to the target, then finetune (baseline floor)."""

    Params = RandomParams
    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        generator = ctx.generator()
        scores = {name: torch.rand(p.shape, generator=generator) for name, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores, scope=self.params.scope))
        ctx.finetune()
