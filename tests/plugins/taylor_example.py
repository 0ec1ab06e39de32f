"""First-order Taylor pruning of the dense model, then finetuning (Molchanov et al., CVPR 2019).

The example plugin of docs/adding_a_method.md: scores |g ⊙ w| of the weighted multi-task loss, summed over
a few training batches of the trained dense model, pruned at the target, then finetuned.
Deviation: per-weight scores instead of the paper's per-filter groups (unstructured, like the benchmark).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from mtlprune import METHODS, MethodContext, MethodParams, OneShotMethod


class TaylorParams(MethodParams):
    batches: int = Field(2, ge=1, description="training batches whose |g·w| is summed")
    scope: Literal["global", "layer", "component"] = Field("global", description="mask selection scope")


@METHODS.register("taylor-example")
class TaylorExample(OneShotMethod):
    """First-order Taylor scores |g·w| on the dense model, one-shot pruning, then finetune."""

    Params = TaylorParams
    starts_from = "dense"  # so OneShotMethod finetunes on the cell's finetune budget after pruning
    contract_params: ClassVar[dict[str, Any]] = {"batches": 1}  # keeps the contract test fast

    def scores(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        net = ctx.scoring_copy()  # dropout off, BN on batch statistics; ctx.model stays untouched
        params = net.prunable_parameters()  # the same names as ctx.prunable()
        scores = {name: torch.zeros_like(p) for name, p in params.items()}
        for batch in ctx.batches(self.params.batches):
            net.zero_grad(set_to_none=True)
            ctx.total_loss(ctx.task_losses(net(batch["input"]), batch)).backward()
            for name, p in params.items():
                scores[name] += (p.grad * p).detach().abs()
        return scores  # lowest pruned, at the cell's target, in `scope` (the `scope` param)
