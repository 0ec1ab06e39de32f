"""One-shot magnitude pruning of the dense model, then finetuning (Han et al., NeurIPS 2015). ``scope``: one
threshold over all weights (the AdapMTL reference's), per layer, or per component. Deviation: none."""

from typing import Literal

from pydantic import Field

from mtlprune import METHODS, MethodContext, MethodParams, OneShotMethod


class MagnitudeParams(MethodParams):
    scope: Literal["global", "layer", "component"] = Field(
        "global",
        description="one global threshold, one per layer, or one per component (backbone, each head)",
    )


@METHODS.register("magnitude")
class Magnitude(OneShotMethod):
    """One-shot magnitude pruning of the dense model (global, per layer or per component), then finetune."""

    Params = MagnitudeParams

    def scores(self, ctx: MethodContext) -> dict:  # |w|: the smallest are pruned
        return {name: p.detach().abs() for name, p in ctx.prunable().items()}
