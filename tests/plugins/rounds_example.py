"""Magnitude pruning in rounds during finetuning: the training-method example of docs/adding_a_method.md.

Prunes the dense model to the target in ``rounds`` equal steps of sparsity (round k reaches k/rounds of
the target) and finetunes after each round; the cell's finetune budget is split across the rounds, so the
method spends exactly what a one-shot method does. Close to Zhu & Gupta (2018) with a staircase schedule.
Deviation: none claimed; it is a teaching example, not a method of the benchmark.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from mtlprune import METHODS, MethodContext, MethodParams, PruningMethod


class RoundsParams(MethodParams):
    rounds: int = Field(3, ge=1, le=100, description="pruning rounds, each followed by finetuning")


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` optimizer steps in ``parts`` near-equal shares adding up to ``total`` (earlier get more)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@METHODS.register("rounds-example")
class RoundsExample(PruningMethod):
    """Magnitude pruning in equal sparsity steps, the finetune budget split across the rounds."""

    Params = RoundsParams
    starts_from = "dense"
    contract_params: ClassVar[dict[str, Any]] = {"rounds": 2}

    def run(self, ctx: MethodContext) -> None:
        rounds = self.params.rounds
        budget = ctx.spec.finetune
        masks = None
        for k, steps in enumerate(split_steps(budget.steps, rounds), start=1):
            scores = {name: p.detach().abs() for name, p in ctx.prunable().items()}
            target = ctx.target * k / rounds if k < rounds else ctx.target  # the last one exactly the target
            # `current` keeps pruned what earlier rounds pruned (iterative selection)
            masks = ctx.select_masks(scores, scope="global", target=target, current=masks)
            ctx.apply_masks(masks)
            ctx.log(**{"rounds.round": k, "rounds.target": target})
            if steps:
                ctx.train(budget.model_copy(update={"steps": steps}), phase="finetune")
