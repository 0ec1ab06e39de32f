"""When a stage has diverged: a failure with the step and the losses, never a result (docs/design.md).

Three rules, each recorded as ``failed (diverged)``:

1. a non-finite loss at any step, or after the last update (the trainer raises at once);
2. a task's loss above ``DIVERGENCE_FACTOR`` × its reference for ``DIVERGENCE_PATIENCE`` consecutive
   optimizer steps, or at the end of a training call: at its last step, or on the weights its last update
   leaves (measured on the last batch once the call has trained, :meth:`StepRunner.end_losses
   <mtlprune.engine.train.StepRunner.end_losses>`; without that, a call of one step, or a stage whose last
   update blows up, ends with weights nobody measured). The reference is the untrained network's loss
   on that task (the dense stage's loss at its step 0, i.e. roughly chance level): a network whose loss
   stays an order of magnitude worse than an untrained one has left every sensible region (a learning
   rate of 1e6 drives it to 1e29 while staying finite), whereas pruning a trained network, even to 99%,
   leaves it near chance at worst. A transient spike shorter than the patience is not divergence;
3. final test metrics that are non-finite, or an error metric (lower is better) above ``ABSURD_FACTOR`` ×
   the trivial predictor's (mtlprune.engine.trivial: the best constant prediction) on the same test split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DIVERGENCE_FACTOR = 10.0
DIVERGENCE_PATIENCE = 10
ABSURD_FACTOR = 10.0


class Divergence(RuntimeError):
    """The run diverged; ``details`` (step, losses, bound) go to the stage's status.json."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class DivergenceGuard:
    """Rule 2 over the steps of one training call; ``reference`` None learns it from the first step seen."""

    def __init__(
        self,
        reference: Mapping[str, float] | None = None,
        factor: float = DIVERGENCE_FACTOR,
        patience: int = DIVERGENCE_PATIENCE,
    ) -> None:
        self.reference = None if reference is None else {t: float(v) for t, v in reference.items()}
        self.factor, self.patience = factor, patience
        self.above = 0  # consecutive steps with a task above its ceiling

    def ceilings(self) -> dict[str, float]:
        return {t: self.factor * v for t, v in (self.reference or {}).items()}

    def check(self, step: int, losses: Mapping[str, float], last: bool) -> None:
        """Raise :class:`Divergence` when rule 2 fires at this step (``last``: the call's final step)."""
        self._check(step, losses, last, f"at step {step}", "at the last step")

    def check_end(self, steps: int, losses: Mapping[str, float]) -> None:
        """Rule 2 on the weights a training call of ``steps`` steps ends with (``losses``: measured after
        its last update); rule 1 too, since no step of the call saw these losses."""
        bad = {t: v for t, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise Divergence(
                f"non-finite loss after the last update (step {steps}) (task losses {bad})",
                step=steps,
                losses=dict(losses),
            )
        self._check(steps, losses, True, f"after the last update (step {steps})", "at the end of the call")

    def _check(self, step: int, losses: Mapping[str, float], last: bool, where: str, at_end: str) -> None:
        if self.reference is None:
            self.reference = {t: float(v) for t, v in losses.items()}
        ceilings = self.ceilings()
        over = {t: v for t, v in losses.items() if t in ceilings and v > ceilings[t]}
        self.above = self.above + 1 if over else 0
        if over and (self.above >= self.patience or last):
            how = at_end if self.above < self.patience else f"for {self.above} consecutive steps"
            shown = ", ".join(f"{t} {v:.4g} > {ceilings[t]:.4g}" for t, v in over.items())
            raise Divergence(
                f"diverged {where}: task loss above {self.factor:g}× the untrained network's {how} ({shown})",
                step=step,
                losses=dict(losses),
                ceilings=ceilings,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "above": self.above}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference = None if state["reference"] is None else dict(state["reference"])
        self.above = int(state["above"])


def check_final_metrics(
    metrics: Mapping[str, float], trivial: Mapping[str, float] | None, direction: Any
) -> None:
    """Rule 3: raise :class:`Divergence` for a non-finite metric or an absurd error metric.

    ``direction(column)`` is +1 for higher-is-better and −1 for lower-is-better metrics
    (:func:`mtlprune.vocabulary.direction`); ``trivial`` holds the trivial predictor's metrics (None: only the
    finiteness check).
    """
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise Divergence(f"final test metrics are not finite: {bad}", metrics=dict(metrics))
    for column, value in metrics.items():
        reference = None if trivial is None else trivial.get(column)
        if reference is None or direction(column) > 0 or not reference > 0:
            continue
        if value > ABSURD_FACTOR * reference:
            raise Divergence(
                f"final test metric {column} = {value:.4g} is more than {ABSURD_FACTOR:g}× the trivial "
                f"predictor's {reference:.4g}: the model is worse than any constant prediction",
                metrics=dict(metrics),
                trivial=dict(trivial or {}),
            )
