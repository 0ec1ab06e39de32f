"""The control row: the dense model finetuned on the finetune budget, with nothing pruned.

Methods that start from the dense checkpoint train it further (finetuning, IMP's rounds, AdapMTL's
ramp); ΔT against the dense model mixes the effect of pruning with the effect of those extra steps. This
control takes exactly the extra steps and no pruning, so ΔT against it isolates what pruning costs
(docs/protocols.md). It is added by the planner once per setting and seed (``MatrixSpec.controls``) at
target sparsity 0 and is never listed as a method. Deviation: none; it is not a published method.
"""

from __future__ import annotations

from mtlprune.engine.context import MethodContext
from mtlprune.methods.base import PruningMethod
from mtlprune.registry import METHODS
from mtlprune.spec import CONTROL_METHOD


@METHODS.register(CONTROL_METHOD)
class DenseFinetune(PruningMethod):
    """Control row: finetune the dense model for the finetune budget, unpruned (target 0)."""

    starts_from = "dense"
    control = True
    step_kind = "dense"  # nothing is masked: its steps cost what a dense step costs

    def run(self, ctx: MethodContext) -> None:
        ctx.finetune()
