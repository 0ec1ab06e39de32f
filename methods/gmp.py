"""Gradual magnitude pruning (GMP) during sparse training from initialisation.

Paper: Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
ICLR Workshop 2018, arXiv 1710.01878; large-scale tuning in Gale, Elsen & Hooker, "The State of Sparsity in
Deep Neural Networks", arXiv 1902.09574, 2019.

Recipe: train from the dense stage's initialisation on ``ctx.sparse_training_spec()`` (T steps). At the
pruning steps t = t0, t0 + Δt, … and at t_end, weights are pruned by |w| among the current survivors to the
cubic schedule s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t_end − t0))³ (:func:`gmp_sparsity`); masks only grow
and pruned weights get zero gradient. After t_end the mask is fixed and training continues to T.

Deliberate deviations / choices, all documented here:

- Steps: ``start`` and ``end`` are fractions of T, t0 = round(start·T) and t_end = min(round(end·T), T − 1)
  on 0-based step indices; pruning at step t happens right after optimizer step t. t_end is clamped to the
  last step so ``end = 1`` still reaches the target (with no recovery steps after it).
- The paper's t_end = t0 + n·Δt is a multiple of Δt after t0; here the last pruning step is always exactly
  t_end (an extra, shorter interval when t_end − t0 is not a multiple of Δt, or the two steps t0 and t_end
  when t_end − t0 < Δt), so the final target is always applied.
- Scope: ``layer`` (the paper's layer-wise uniform targets) is the default; ``global``, ``component`` and
  ``erk`` use the benchmark's shared selection (``ctx.select_masks``). Under ``erk`` the new mask is AND-ed
  with the current one so masks still only grow; the per-layer rounding of ERK can then leave at most a few
  weights more pruned than round(target·N).
- ``initial_sparsity`` above the cell's target is rejected (masks cannot shrink).
- With ``eval.selection: best_val`` the trainer may end on a step before t_end, whose mask is short of the
  target; the method then prunes that model once more, by |w| among its survivors, to the target (no
  recovery steps after it) and logs ``gmp.final_prune = 1``. Under the default ``last`` this never happens.
- Every pruning step is also written with ``ctx.log`` (``gmp.step``, ``gmp.sparsity``, ``gmp.achieved``),
  so it reaches log.jsonl whatever ``runtime.log_every`` is; the step record carries the same scalars.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mtlprune.engine.context import MethodContext
from mtlprune.engine.sparsity import Masks
from mtlprune.engine.train import StepRunner, TrainCallback
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.registry import METHODS

Selector = Callable[[Mapping[str, Tensor], float, Masks | None], Masks]


def gmp_sparsity(step: int, target: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """The cubic GMP schedule: ``initial`` before ``start_step``, ``target`` from ``end_step`` on.

    s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t_end − t0))³ in between (Zhu & Gupta 2018, eq. 1).
    """
    if end_step < start_step:
        raise ValueError(f"end_step {end_step} precedes start_step {start_step}")
    if step >= end_step:
        return float(target)
    if step < start_step:
        return float(initial)
    progress = (step - start_step) / (end_step - start_step)
    value = target + (initial - target) * (1.0 - progress) ** 3
    # Clamp to [s_i, s_f]: at t0 the closed form can round one ulp below s_i.
    return float(min(max(value, min(initial, target)), max(initial, target)))


def gmp_steps(total_steps: int, start: float, end: float) -> tuple[int, int]:
    """(t0, t_end) as 0-based step indices for fractions ``start`` < ``end`` of ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    end_step = min(round(end * total_steps), total_steps - 1)
    start_step = min(round(start * total_steps), end_step)
    return start_step, end_step


def gmp_pruning_steps(start_step: int, end_step: int, frequency: int) -> list[int]:
    """t0, t0 + Δt, … below t_end, then t_end itself: the final target is always applied."""
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")
    return [*range(start_step, end_step, frequency), end_step]


def pruned_fraction(masks: Masks) -> float:
    """Fraction of weights pruned by ``masks``, counted."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((~m).sum()) for m in masks.values()) / total


class GMPCallback(TrainCallback):
    """Prunes by |w| among the survivors to the scheduled sparsity at each pruning step (after the update)."""

    def __init__(
        self,
        select: Selector,
        schedule: Callable[[int], float],
        pruning_steps: list[int],
        grow_only: bool = False,
        log: Callable[..., None] = lambda **scalars: None,
    ) -> None:
        self.select, self.schedule, self.log = select, schedule, log
        self.pruning_steps = frozenset(pruning_steps)
        self.grow_only = grow_only

    def after_step(self, step: int, runner: StepRunner) -> Mapping[str, float] | None:
        if step not in self.pruning_steps:
            return None
        sparsity = self.schedule(step)
        current = runner.masks
        if sparsity > 0.0 or current is not None:
            scores = {name: p.detach().abs() for name, p in runner.params.items()}
            masks = {n: m.cpu() for n, m in self.select(scores, sparsity, current).items()}
            if self.grow_only and current is not None:
                masks = {n: m & current[n] for n, m in masks.items()}
            runner.set_masks(masks)
        achieved = 0.0 if runner.masks is None else pruned_fraction(runner.masks)
        scalars = {"gmp.sparsity": sparsity, "gmp.achieved": achieved}
        self.log(**{"gmp.step": step, **scalars})
        return scalars


class GMPParams(MethodParams):
    start: float = Field(0.125, ge=0.0, lt=1.0, description="fraction of the T steps where pruning starts")
    end: float = Field(0.75, gt=0.0, le=1.0, description="fraction of T where the last pruning step happens")
    frequency: int = Field(100, ge=1, description="optimizer steps between pruning steps (Δt)")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="s_i: sparsity at t0")
    scope: Literal["layer", "global", "component", "erk"] = Field(
        "layer", description="layer-wise uniform (the paper), one global ranking, per component, or ERK"
    )

    @model_validator(mode="after")
    def _start_before_end(self) -> GMPParams:
        if not self.start < self.end:
            raise ValueError(f"start ({self.start}) must be smaller than end ({self.end})")
        return self


@METHODS.register("gmp")
class GMP(PruningMethod):
    """Gradual magnitude pruning from init on a cubic schedule during training (Zhu & Gupta 2018)."""

    Params = GMPParams
    starts_from = "init"

    def run(self, ctx: MethodContext) -> None:
        p: GMPParams = self.params  # type: ignore[assignment]
        if p.initial_sparsity > ctx.target:
            raise ValueError(
                f"gmp: initial_sparsity {p.initial_sparsity} exceeds the target {ctx.target}: masks only grow"
            )
        spec = ctx.sparse_training_spec()
        start_step, end_step = gmp_steps(spec.steps, p.start, p.end)
        steps = gmp_pruning_steps(start_step, end_step, p.frequency)

        def select(scores: Mapping[str, Tensor], target: float, current: Masks | None) -> Masks:
            return ctx.select_masks(scores, scope=p.scope, target=target, current=current)

        def schedule(step: int) -> float:
            return gmp_sparsity(step, ctx.target, start_step, end_step, p.initial_sparsity)

        callback = GMPCallback(select, schedule, steps, grow_only=p.scope == "erk", log=ctx.log)
        ctx.train(spec, callbacks=[callback])
        self._ensure_target(ctx, select, grow_only=p.scope == "erk")

    @staticmethod
    def _ensure_target(ctx: MethodContext, select: Selector, grow_only: bool) -> None:
        """Prune once more to the target when best-val selection ended before t_end (no-op otherwise)."""
        scores = {name: w.detach().abs() for name, w in ctx.prunable().items()}
        final = {n: m.cpu() for n, m in select(scores, ctx.target, ctx.masks).items()}
        if grow_only and ctx.masks is not None:
            final = {n: m & ctx.masks[n] for n, m in final.items()}
        if ctx.masks is not None and all(torch.equal(final[n], ctx.masks[n]) for n in final):
            return
        ctx.apply_masks(final)
        ctx.log(**{"gmp.final_prune": 1, "gmp.achieved": pruned_fraction(final)})
