"""The pruning-method plugin contract.

A method is a class registered by name (``@METHODS.register("name")``) with a typed pydantic ``Params``
model, a ``starts_from`` ("dense": the shared dense checkpoint, or "init": the shared initialisation) and a
``run(ctx)`` that prunes ``ctx.model`` to ``ctx.target`` through the context. Achieved sparsity is
measured afterwards from the weights, never taken from the method.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from mtlprune.context import MethodContext
from mtlprune.spec import StrictModel


class MethodParams(StrictModel):
    """Base for a method's typed parameters: frozen, unknown keys rejected with a close-match suggestion."""


class NoParams(MethodParams):
    """A method without parameters."""


class PruningMethod:
    """Base of every method: ``Params``, where it starts, its sparsity tolerance, and ``run(ctx)``."""

    Params: ClassVar[type[BaseModel]] = NoParams
    starts_from: ClassVar[Literal["dense", "init"]] = "dense"
    # Largest |achieved − target| (fraction) the contract accepts; methods with learned sparsity widen it.
    sparsity_tolerance: ClassVar[float] = 0.001
    # Params for the contract test suite's tiny run (tests/test_method_contract.py): shrink what is slow
    # (rounds, update intervals) so every registered method runs in seconds on a CPU.
    contract_params: ClassVar[dict[str, Any]] = {}
    # A control row (the dense model finetuned, unpruned) runs at target 0 and is added by the planner once
    # per setting and seed (MatrixSpec.controls); it is never listed as a method of a matrix.
    control: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    @property
    def start(self) -> Literal["dense", "init"]:
        """Where this configured instance starts; a method whose params choose it overrides this."""
        return self.starts_from

    def run(self, ctx: MethodContext) -> None:
        raise NotImplementedError
