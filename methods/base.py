"""The pruning-method plugin contract.

A method is a class registered by name (``@METHODS.register("name")``) with a typed pydantic ``Params``
model, a ``starts_from`` ("dense": the shared dense checkpoint, or "init": the shared initialisation) and a
``run(ctx)`` that prunes ``ctx.model`` to ``ctx.target`` through the context. Achieved sparsity is
measured afterwards from the weights, never taken from the method. :class:`OneShotMethod` is the short
form for methods that select once: they give ``scores(ctx)`` (or ``masks(ctx)``) and the base class
applies them and trains by the fairness rule.

``planned_steps(spec)`` says, before anything runs, how many optimizer steps the method will take in a cell
(``mtlprune plan`` prices the matrix with it); its default is the fairness rule, and a method that spends
otherwise overrides it (tests/methods/test_planned_steps.py checks it against what a run records).

A method that needs trained models other than the shared dense one (ECS's single-task base) asks the planner
for them with ``extra_stages(spec)``: dense stages planned once per setting like the shared one, run before
the cell, read through ``ctx.stage_weights`` and counted in the cell's ``steps_total``. A method whose target
is not a pruning sparsity of the prunable set (ECS: the density of each task's weight delta) says so with
``sparsity_axis``; the runner then checks the target on that axis.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel
from torch import Tensor

from mtlprune.engine.context import MethodContext
from mtlprune.plan.compute import fairness_steps
from mtlprune.spec import DenseSpec, RunSpec, StrictModel


class MethodParams(StrictModel):
    """Base for a method's typed parameters: frozen, unknown keys rejected with a close-match suggestion."""


class NoParams(MethodParams):
    """A method without parameters."""


class PruningMethod:
    """Base of every method: ``Params``, where it starts, its sparsity tolerance, and ``run(ctx)``."""

    Params: ClassVar[type[BaseModel]] = NoParams
    # "dense": the shared dense checkpoint; "init": its initialisation; "base": a stage the method plans
    # itself (``extra_stages``), whose steps count in ``steps_total`` instead of the dense stage's.
    starts_from: ClassVar[Literal["dense", "init", "base"]] = "dense"
    # Largest |achieved − target| (fraction) the contract accepts; methods with learned sparsity widen it.
    sparsity_tolerance: ClassVar[float] = 0.001
    # Params for the contract test suite's tiny run (tests/methods/test_method_contract.py): shrink what is
    # slow (rounds, update intervals) so every registered method runs in seconds on a CPU.
    contract_params: ClassVar[dict[str, Any]] = {}
    # A control row (the dense model finetuned, unpruned) runs at target 0 and is added by the planner once
    # per setting and seed (MatrixSpec.controls); it is never listed as a method of a matrix.
    control: ClassVar[bool] = False
    # What one of its optimizer steps costs like, for `mtlprune plan`'s time estimate from the step times
    # tools.gpu_check measures: "masked" (masks held), "dense" (no masks), "adapmtl" (soft thresholds).
    step_kind: ClassVar[str] = "masked"
    # What the cell's target sparsity means: "prunable" (zeros of the prunable set, every pruning method)
    # or "delta" (zeros of each task's weight delta, ECS: ``sparsity.delta.<task>``, checked per task).
    sparsity_axis: ClassVar[Literal["prunable", "delta"]] = "prunable"
    # The method's behaviour revision: bump it when what the method computes changes under the same params
    # (a new default, a faithfulness fix). Above 1 it enters the cells' run ids (MethodSpec.revision), so a
    # result of the old behaviour is never reused for the new one; other methods keep their run ids.
    revision: ClassVar[int] = 1

    def __init__(self, params: BaseModel) -> None:
        self.params = params
        # Where this configured instance starts: the class's ``starts_from``, unless a method whose params
        # choose it (a ``start`` parameter) sets the instance's ``starts_from`` from them.

    def run(self, ctx: MethodContext) -> None:
        raise NotImplementedError

    def planned_steps(self, spec: RunSpec) -> int:
        """The optimizer steps this configured method will take in cell ``spec`` — what its result records
        as ``steps_method`` — so that ``mtlprune plan`` can price a matrix before it runs.

        The default is the fairness rule (docs/protocols.md), which ``MethodContext`` budgets: the finetune
        steps from ``dense``, dense + finetune steps from ``init``. A method that spends otherwise (rounds,
        a budget of its own) overrides this with the same arithmetic as its ``run``.
        """
        return fairness_steps(self.starts_from, spec.train.steps, spec.finetune.steps)

    def check_spec(self, spec: RunSpec) -> None:
        """Raise ``ValueError`` when this configured method cannot run cell ``spec`` (a budget it needs, a
        setting it does not support). Called when the matrix is validated, for every method, dataset and
        sparsity, so the problem is reported before any work starts; nothing to check by default."""

    def extra_stages(self, spec: RunSpec) -> list[DenseSpec]:
        """Dense stages this configured method needs in cell ``spec`` besides the shared dense stage (none by
        default). The planner runs each once per setting, before the cells, shared by every cell that asks
        for the same one; the method reads them with ``ctx.stage_weights`` and their steps count in the
        cell's ``steps_total``. Raise ``ValueError`` for a cell the method cannot run (a missing task)."""
        return []


class OneShotMethod(PruningMethod):
    """Select once, then train by the fairness rule: the tier most methods need.

    A subclass implements ``scores(ctx)`` (lowest pruned first; the keep-masks come from
    ``ctx.select_masks`` at the cell's target in ``scope``), or overrides ``masks(ctx)`` when it selects
    otherwise (per task, iteratively). ``run`` then applies the masks and trains: a method that starts from
    ``dense`` finetunes on the cell's finetune budget (``ctx.finetune()``); one that starts from ``init``
    trains the sparse network on dense + finetune steps (``ctx.sparse_training_spec()``).
    """

    def scores(self, ctx: MethodContext) -> dict[str, Tensor]:
        """One score per prunable weight (names as ``ctx.prunable()``); the lowest are pruned."""
        raise NotImplementedError(f"{type(self).__name__} implements neither scores(ctx) nor masks(ctx)")

    @property
    def scope(self) -> str:
        """Where the target applies (``global``, ``layer``, ``component``, ``erk``): the ``scope`` param."""
        return getattr(self.params, "scope", "global")

    def masks(self, ctx: MethodContext) -> dict[str, Tensor]:
        """The keep-masks at the cell's target (the model is not changed)."""
        return ctx.select_masks(self.scores(ctx), scope=self.scope)

    def run(self, ctx: MethodContext) -> None:
        ctx.apply_masks(self.masks(ctx))
        if self.starts_from == "init":
            ctx.train(ctx.sparse_training_spec(), phase="train")
        else:
            ctx.finetune()
