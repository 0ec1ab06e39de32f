"""Iterative magnitude pruning over rounds: the lottery-ticket family (``lth``) and plain IMP (``imp``).

Papers:
- Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", ICLR 2019,
  arXiv 1803.03635 (IMP with reset to the initialisation);
- Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020,
  arXiv 1912.05671 (weight rewinding to an early iterate θ_k);
- Renda, Frankle & Carbin, "Comparing Rewinding and Fine-tuning in Neural Network Pruning", ICLR 2020,
  arXiv 2003.02389 (fine-tuning vs learning-rate rewinding).

Both methods start from the trained dense model and run N rounds. Each round prunes, by |w| among the
survivors (``ctx.select_masks(..., current=ctx.masks)``, so masks only grow), a fraction ``rate`` of the
REMAINING weights: round r reaches sparsity min(target, 1 − (1 − rate)^r), and the last round reaches the
cell's target exactly; N is the smallest number with 1 − (1 − rate)^N >= target (:func:`round_targets`).
- ``lth`` resets the survivors to the dense stage's rewind snapshot (θ_k, or θ_0 with ``rewind: init``)
  and retrains them on the dense recipe with its LR schedule replayed from step k.
- ``imp`` keeps the current weights and finetunes them (the finetune recipe, "IMP-FT"), or with
  ``lr_rewind`` retrains them on the dense recipe replayed from step k ("IMP-LRR", Renda et al.).
The final model is the last round's retrained network.

A one-round configuration (``rate`` >= target) is one-shot pruning followed by the rewind/finetune:
``lth`` with ``rewind: init`` and ``rate`` >= target is AdapMTL's in-house "LTH" baseline (train dense,
prune to the target, reset to the initial weights, train sparse), and ``imp`` with ``rate`` >= target and the
default finetuning is exactly the ``magnitude`` method. AdapMTL's "IMP" ("iteratively remove the
smallest-magnitude weights", recipe unpublished) maps to ``imp`` with the defaults.

Deliberate deviations and choices, all documented here:

- Budget: these methods deliberately spend more than the benchmark's default finetune budget, as the papers
  do: ``lth`` spends N × (T − k) steps beyond the dense stage (N × ``round_steps`` when given), ``imp``
  N × finetune.steps (N × ``round_steps``; N × (T − k) with ``lr_rewind``). ``steps_total`` records it.
  ``round_steps`` shortens every round's retraining (a deviation from the papers, for cheap demos).
- The first round prunes the trained dense model of the shared dense stage; the papers' first "round" is
  that same dense training, so it is not repeated. θ_k is the dense stage's ``rewind.pt``, taken after
  ``train.rewind_at`` optimizer steps (default 5% of T, at least 1; OpenLTH sets it in iterations/epochs).
- Rewinding loads the whole state of the snapshot (BN parameters and running statistics, biases included),
  as OpenLTH does; only conv/linear weights are pruned (the benchmark's prunable set).
- LR replay: the retraining spec is the dense recipe with ``steps`` = T − k (or ``round_steps``), trained
  with ``schedule`` = the dense recipe and ``step_offset`` = k, so every step's LR is the dense schedule's
  value at step j + k (its cosine horizon and step period included): the replay is exact.
- A fresh optimizer (fresh Adam moments) starts every round, as in OpenLTH.
- Scope: ``global`` (one threshold, the papers' ``sparse_global``) is the default; ``layer`` and
  ``component`` (backbone and each head separately) use the benchmark's shared selection.
- With ``eval.selection: best_val`` each round ends on its best validation step (masks are fixed within a
  round, so the target is unaffected).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from mtlprune.engine.context import MethodContext
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.registry import METHODS
from mtlprune.spec import RunSpec, TrainSpec

Scope = Literal["global", "layer", "component"]
_EPS = 1e-12  # float slack: 1 − 0.8² is 0.35999…, which must still count as reaching 0.36


def round_targets(target: float, rate: float) -> list[float]:
    """Sparsity after each round when every round prunes ``rate`` of the remaining weights.

    N is the smallest number with 1 − (1 − rate)^N >= target; round r reaches min(target, 1 − (1 − rate)^r)
    and the last one exactly ``target``. E.g. (0.9, 0.2) → 11 rounds 0.2, 0.36, 0.488, …, 0.9.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    targets: list[float] = []
    if target == 0.0:
        return targets
    while not targets or targets[-1] < target:
        reached = 1.0 - (1.0 - rate) ** (len(targets) + 1)
        targets.append(target if reached >= target - _EPS else round(reached, 12))
    return targets


def replay_spec(dense: TrainSpec, offset: int, steps: int | None) -> TrainSpec:
    """The dense recipe for retraining from step ``offset``: T − offset steps unless ``steps`` is given."""
    n = steps if steps is not None else dense.steps - offset
    if n < 1:
        raise ValueError(
            f"the dense schedule has no steps left after the rewind step {offset} (train.steps "
            f"{dense.steps}); lower train.rewind_step or set round_steps"
        )
    return dense.model_copy(update={"steps": n})


def prune_round(ctx: MethodContext, scope: Scope, sparsity: float, round_: int, rounds: int) -> None:
    """Prune the current weights by |w| among the survivors to ``sparsity``, record and log the masks."""
    scores = {name: p.detach().abs() for name, p in ctx.prunable().items()}
    masks = ctx.select_masks(scores, scope=scope, target=sparsity, current=ctx.masks)
    ctx.apply_masks(masks)
    kept = sum(int(m.sum()) for m in ctx.masks.values())  # type: ignore[union-attr]
    total = sum(m.numel() for m in ctx.masks.values())  # type: ignore[union-attr]
    ctx.log(round=round_, rounds=rounds, sparsity=sparsity, kept=kept, achieved=1.0 - kept / total)


class LTHParams(MethodParams):
    rate: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the remaining weights pruned per round")
    scope: Scope = Field(
        "global", description="one global |w| threshold, one per layer, or one per component"
    )
    rewind: Literal["early", "init"] = Field(
        "early",
        description="reset survivors to the dense stage's early snapshot θ_k (Frankle et al. 2020) or to "
        "the initialisation θ_0 (Frankle & Carbin 2019; AdapMTL's LTH)",
    )
    round_steps: int | None = Field(
        None, ge=1, description="retraining steps per round; default the rest of the dense schedule, T − k"
    )


@METHODS.register("lth")
class LotteryTicket(PruningMethod):
    """Lottery-ticket IMP: prune a share of the survivors, rewind them to θ_k (or θ_0), retrain; repeat.

    Cost beyond the dense stage: N rounds × (T − k) steps (N × ``round_steps`` when given), with N from
    :func:`round_targets`; k = ``train.rewind_at`` for ``rewind: early``, 0 for ``init``. One round
    (``rate`` >= target) with ``rewind: init`` is AdapMTL's one-shot "LTH" baseline.
    """

    Params = LTHParams
    starts_from = "dense"
    contract_params: ClassVar[dict[str, Any]] = {"rate": 0.5, "round_steps": 2}

    def run(self, ctx: MethodContext) -> None:
        p: LTHParams = self.params  # type: ignore[assignment]
        offset = ctx.rewind_step() if p.rewind == "early" else 0
        snapshot: Mapping[str, Any] = ctx.dense_weights("rewind" if p.rewind == "early" else "init")
        spec = replay_spec(ctx.spec.train, offset, p.round_steps)
        targets = round_targets(ctx.target, p.rate)
        for r, sparsity in enumerate(targets, start=1):
            prune_round(ctx, p.scope, sparsity, r, len(targets))
            ctx.load_weights(snapshot)  # the survivors get θ_k (or θ_0); the masks are re-applied
            # The dense schedule (its horizon and period) replayed from step k.
            ctx.train(spec, phase="retrain", step_offset=offset, schedule=ctx.spec.train)

    def check_spec(self, spec: RunSpec) -> None:
        """Rewinding to θ_k leaves T − k steps to retrain each round: none when k = T, unless ``round_steps``
        sets them."""
        p: LTHParams = self.params  # type: ignore[assignment]
        if p.rewind == "early":
            replay_spec(spec.train, spec.train.rewind_at, p.round_steps)

    def planned_steps(self, spec: RunSpec) -> int:
        """N rounds × (T − k) retraining steps (N × ``round_steps`` when given), as ``run`` takes them."""
        p: LTHParams = self.params  # type: ignore[assignment]
        offset = spec.train.rewind_at if p.rewind == "early" else 0
        per_round = replay_spec(spec.train, offset, p.round_steps).steps
        return len(round_targets(spec.target_sparsity, p.rate)) * per_round


class IMPParams(MethodParams):
    rate: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the remaining weights pruned per round")
    scope: Scope = Field(
        "global", description="one global |w| threshold, one per layer, or one per component"
    )
    round_steps: int | None = Field(
        None,
        ge=1,
        description="steps per round; default the finetune budget (T − k on the dense recipe with lr_rewind)",
    )
    lr_rewind: bool = Field(
        False,
        description="retrain on the dense recipe with its LR schedule replayed from the rewind step k "
        "(Renda et al. 2020) instead of the finetune recipe",
    )


@METHODS.register("imp")
class IterativeMagnitude(PruningMethod):
    """Iterative magnitude pruning: prune a share of the survivors, finetune the current weights; repeat.

    Cost beyond the dense stage: N rounds × finetune.steps (N × ``round_steps`` when given; N × (T − k) on the
    dense recipe with ``lr_rewind``), N from :func:`round_targets`. One round (``rate`` >= target) with the
    default finetuning is exactly one-shot ``magnitude``.
    """

    Params = IMPParams
    starts_from = "dense"
    contract_params: ClassVar[dict[str, Any]] = {"rate": 0.5, "round_steps": 2}

    def run(self, ctx: MethodContext) -> None:
        p: IMPParams = self.params  # type: ignore[assignment]
        targets = round_targets(ctx.target, p.rate)
        for r, sparsity in enumerate(targets, start=1):
            prune_round(ctx, p.scope, sparsity, r, len(targets))
            if p.lr_rewind:
                offset = ctx.rewind_step()
                ctx.train(
                    replay_spec(ctx.spec.train, offset, p.round_steps),
                    phase="retrain",
                    step_offset=offset,
                    schedule=ctx.spec.train,
                )
            elif p.round_steps is not None:
                ctx.finetune(ctx.spec.finetune.model_copy(update={"steps": p.round_steps}))
            else:
                ctx.finetune()

    def check_spec(self, spec: RunSpec) -> None:
        """With ``lr_rewind``, each round retrains T − k steps: none when k = T, unless ``round_steps`` sets
        them."""
        p: IMPParams = self.params  # type: ignore[assignment]
        if p.lr_rewind:
            replay_spec(spec.train, spec.train.rewind_at, p.round_steps)

    def planned_steps(self, spec: RunSpec) -> int:
        """N rounds × finetune steps (× ``round_steps`` when given; × (T − k) with ``lr_rewind``), as in
        ``run``."""
        p: IMPParams = self.params  # type: ignore[assignment]
        rounds = len(round_targets(spec.target_sparsity, p.rate))
        if rounds == 0:
            return 0
        if p.lr_rewind:
            return rounds * replay_spec(spec.train, spec.train.rewind_at, p.round_steps).steps
        return rounds * (p.round_steps if p.round_steps is not None else spec.finetune.steps)


__all__ = ["IterativeMagnitude", "LotteryTicket", "replay_spec", "round_targets"]
