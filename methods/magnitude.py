"""One-shot magnitude pruning of the dense checkpoint, then finetuning (Han et al., NeurIPS 2015).

Scores are |w| of the trained dense model; ``scope: global`` uses one threshold over every prunable weight
(the global variant of Frankle & Carbin 2019 and Blalock et al. 2020), ``scope: layer`` prunes each layer to
the target. Deviation: none from the standard recipe; finetuning uses the cell's finetune budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bench.context import MethodContext
from bench.registry import METHODS
from methods.base import MethodParams, PruningMethod


class MagnitudeParams(MethodParams):
    scope: Literal["global", "layer"] = Field("global", description="one global threshold or one per layer")


@METHODS.register("magnitude")
class Magnitude(PruningMethod):
    """One-shot magnitude pruning of the dense model (global or per-layer), then finetune."""

    Params = MagnitudeParams
    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        scores = {name: p.detach().abs() for name, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores, scope=self.params.scope))
        ctx.finetune()
