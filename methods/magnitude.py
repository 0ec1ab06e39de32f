"""One-shot magnitude pruning of the dense checkpoint, then finetuning (Han et al., NeurIPS 2015).

Scores are |w| of the trained dense model; ``scope: global`` uses one threshold over every prunable weight
(the global variant of Frankle & Carbin 2019 and Blalock et al. 2020; also what the AdapMTL reference's
``pruning.py`` does), ``scope: layer`` prunes each layer to the target (Han et al.'s layerwise thresholds
with a uniform rate), ``scope: component`` prunes the backbone and each task head to the target separately
(one threshold per component: global magnitude across ASPP heads and a ResNet backbone can starve a
component). Deviation: none from the standard recipe; finetuning uses the cell's finetune budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mtlprune.context import MethodContext
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.registry import METHODS


class MagnitudeParams(MethodParams):
    scope: Literal["global", "layer", "component"] = Field(
        "global",
        description="one global threshold, one per layer, or one per component (backbone, each head)",
    )


@METHODS.register("magnitude")
class Magnitude(PruningMethod):
    """One-shot magnitude pruning of the dense model (global, per layer or per component), then finetune."""

    Params = MagnitudeParams
    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        scores = {name: p.detach().abs() for name, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores, scope=self.params.scope))
        ctx.finetune()
