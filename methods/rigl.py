"""RigL: dynamic sparse training from initialisation (Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery:
Making All Tickets Winners", ICML 2020, arXiv 1911.11134).

The network starts sparse at the shared initialisation with a random mask whose per-layer densities follow
ERK (or are uniform), and trains on the at-init budget (``ctx.sparse_training_spec()``: dense + finetune
steps). Every ``delta_t`` steps while t < t_end = ⌊end · T⌋ (t = 0 included, as in the official code),
each layer drops n = ⌊f(t) · n_active⌋ of its active weights with the smallest |w|, with
f(t) = (α/2)(1 + cos(π t / t_end)), and grows the n inactive connections with the largest |dense gradient|
of that step. Per-layer counts never change, so the total sparsity stays exactly at the target after every
update.

Deviations and choices (everything else follows the paper and the official google-research/rigl code):

- Multi-task: the grow score is |∂L/∂w| of the recipe's weighted sum of task losses (fixed ``task_weights``,
  default 1) on the step's batch; no per-task arbiter (that is DiSparse's dynamic variant).
- An inactive connection whose dense gradient is exactly zero is never grown (the official code would grow
  it on a tie): it starts at zero and, where its gradient is structurally zero (a dilated tap that only
  sees padding on small inputs, a dead unit), stays zero, so the model would end sparser than its mask
  (observed: 53% instead of 50% on the CPU demo). When too few connections are growable, dropped weights
  come back instead, so fewer are swapped and per-layer counts stay constant.
- Timing: the mask changes in ``after_backward`` of an update step, and that step's optimizer update is still
  taken with the new mask (regrown weights receive this step's gradient at once, dropped ones none). The
  official TF1 ``SparseRigLOptimizer`` skips the weight update on a mask-update iteration instead; every
  step here counts toward the budget alike.
- Regrown weights start at zero, as in the paper; here they are zero already (pruned weights are held
  exactly zero), so nothing is written. As in the official code (grow candidates are all weights not kept
  after the drop, ``reinit_when_same=False``), a weight dropped in an update may be regrown in the same
  update (``regrow_dropped: true``, the default); it then simply keeps its value and optimizer state.
  ``regrow_dropped: false`` grows only among weights inactive before the update (not the official rule;
  offered as a variant).
- Optimizer state: the slots of newly grown connections (Adam ``exp_avg``/``exp_avg_sq``, SGD
  ``momentum_buffer``) are set to zero, as the official ``reset_momentum`` does. Adam's step counter is per
  tensor in torch, so a regrown weight's bias correction is its tensor's, not restarted. Without the reset
  their moments would be what the optimizer left after their gradients were masked to zero (decayed towards
  zero, exactly zero for weights never active).
- Ties are broken by position (stable sort) instead of the TF1 code's 1e-5 Gaussian noise on drop scores
  (the TF2 code adds no noise either), so runs are deterministic.
- ``distribution: uniform`` puts every layer at the target (no dense-first-layer option). ERK densities
  are those of ``mtlprune.engine.sparsity.erk_densities`` with per-layer counts rounded so the total is exact.
- Budget: the benchmark's 1× rule (dense + finetune steps on the dense recipe); RigL's 2×/5× training
  multipliers are not used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlprune.engine.context import MethodContext
from mtlprune.engine.sparsity import Masks
from mtlprune.engine.train import StepRunner, TrainCallback
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.registry import METHODS


def rigl_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """Cosine-annealed drop fraction f(t) = (α/2)(1 + cos(π t / t_end)); 0 from ``end_step`` on."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end_step))


@torch.no_grad()
def rigl_update(weight: Tensor, grad: Tensor, mask: Tensor, n: int, regrow_dropped: bool = True) -> Tensor:
    """One layer's RigL mask update: drop the ``n`` active weights of smallest |w|, grow ``n`` by |grad|.

    Grow candidates are the weights not kept after the drop (``regrow_dropped``, as the official code: a
    dropped weight may come straight back) or only those inactive before it (``regrow_dropped=False``;
    ``n`` is then capped at the number of growable weights). An inactive weight whose dense gradient is
    exactly zero is never grown: it is zero and would stay zero (e.g. dilated taps that only ever see
    padding), so the sparsity counted from the weights would silently exceed the mask's. The count of
    active weights is unchanged. Ties go to the lower flat index. Returns the new boolean keep-mask
    (shape and device of ``mask``).
    """
    active = mask.detach().flatten().to(device=weight.device, dtype=torch.bool)
    w = weight.detach().flatten().abs().to(torch.float64)
    g = grad.detach().flatten().abs().to(torch.float64)
    growable = ~active & (g > 0)
    n_active = int(active.sum())
    n = min(int(n), n_active)
    if not regrow_dropped:
        n = min(n, int(growable.sum()))
    if n <= 0:
        return mask.detach().to(torch.bool).clone()
    inf = torch.tensor(math.inf, dtype=torch.float64, device=w.device)
    drop_score = torch.where(active, w, inf)  # only active weights can be dropped
    dropped = torch.sort(drop_score, stable=True).indices[:n]
    kept = active.clone()
    kept[dropped] = False
    # Dropped weights (nonzero values) may come back even with a zero gradient: then fewer are swapped.
    candidates = growable | (active & ~kept) if regrow_dropped else growable
    grow_score = torch.where(candidates, g, -inf)
    grown = torch.sort(grow_score, descending=True, stable=True).indices[:n]
    new = kept.clone()
    new[grown] = True
    return new.view(mask.shape).to(mask.device)


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: nn.Parameter, where: Tensor) -> int:
    """Zero the per-element optimizer slots of ``param`` at ``where`` (regrown connections); returns how
    many slot tensors were touched. Scalar state (Adam's ``step``) is per tensor and left alone."""
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    where = where.to(device=param.device, dtype=torch.bool)
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(where, 0)
            touched += 1
    return touched


class MaskUpdateCallback(TrainCallback):
    """Shared by the drop-and-grow callbacks: one record per mask update, logged with its step and kept
    (in the checkpoint too) as the update history. The masks themselves are the runner's."""

    def __init__(self) -> None:
        self.updates: list[dict[str, float]] = []  # one record per mask update (what after_step logs)
        self._pending: dict[str, float] | None = None

    def record_update(self, step: int, scalars: dict[str, float]) -> None:
        self._pending = scalars
        self.updates.append({"step": float(step), **scalars})

    def after_step(self, step: int, runner: StepRunner) -> dict[str, float] | None:
        scalars, self._pending = self._pending, None
        return scalars

    def state_dict(self) -> dict[str, Any]:
        return {"updates": [dict(u) for u in self.updates]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = [dict(u) for u in state["updates"]]


class RigLCallback(MaskUpdateCallback):
    """Drop-and-grow every ``delta_t`` steps before ``end_step``, on the step's dense gradient."""

    def __init__(self, delta_t: int, alpha: float, end_step: int, regrow_dropped: bool = True) -> None:
        super().__init__()
        self.delta_t, self.alpha, self.end_step = delta_t, alpha, end_step
        self.regrow_dropped = regrow_dropped

    def is_update_step(self, step: int) -> bool:
        return step % self.delta_t == 0 and step < self.end_step

    def after_backward(self, step: int, runner: StepRunner) -> None:
        if not self.is_update_step(step) or runner.masks is None:
            return
        fraction = rigl_drop_fraction(step, self.alpha, self.end_step)
        new_masks: Masks = {}
        changed = 0
        for name, mask in runner.masks.items():
            param = runner.params[name]
            n = int(fraction * int(mask.sum()))  # ⌊f · n_active⌋, as the official code
            if param.grad is None or n == 0:
                new_masks[name] = mask
                continue
            old = mask.to(param.device)
            new = rigl_update(param, param.grad, old, n, regrow_dropped=self.regrow_dropped)
            grown = new & ~old  # newly active connections (their weights are exactly zero already)
            changed += int(grown.sum())
            reset_optimizer_state(runner.optimizer, param, grown)
            new_masks[name] = new.cpu()
        # The gradient is masked with the new masks next, so this step already trains the new topology.
        runner.set_masks(new_masks)
        self.record_update(step, {"rigl.drop_fraction": fraction, "rigl.changed": float(changed)})


class RigLParams(MethodParams):
    distribution: Literal["erk", "uniform"] = Field(
        "erk", description="layer densities: Erdős–Rényi-Kernel, or every layer at the target"
    )
    delta_t: int = Field(100, ge=1, description="optimizer steps between mask updates (ΔT)")
    alpha: float = Field(0.3, gt=0.0, le=1.0, description="initial drop fraction α of the cosine schedule")
    end: float = Field(
        0.75, gt=0.0, le=1.0, description="fraction of training after which the mask is fixed (T_end / T)"
    )
    regrow_dropped: bool = Field(
        True,
        description="a weight dropped in an update may be regrown in the same update (official code)",
    )


@METHODS.register("rigl")
class RigL(PruningMethod):
    """RigL dynamic sparse training from init: random ERK mask, periodic magnitude-drop / gradient-grow."""

    Params = RigLParams
    starts_from = "init"
    contract_params: ClassVar[dict[str, Any]] = {"delta_t": 2}  # several updates within the tiny run

    def initial_masks(self, ctx: MethodContext) -> Masks:
        """A random mask with exact per-layer counts (ERK or uniform) from the cell's seeded generator."""
        generator = ctx.generator()
        scores = {name: torch.rand(p.shape, generator=generator) for name, p in ctx.prunable().items()}
        return ctx.select_masks(scores, scope="erk" if self.params.distribution == "erk" else "layer")

    def run(self, ctx: MethodContext) -> None:
        ctx.apply_masks(self.initial_masks(ctx))
        spec = ctx.sparse_training_spec()
        callback = RigLCallback(
            delta_t=self.params.delta_t,
            alpha=self.params.alpha,
            end_step=math.floor(self.params.end * spec.steps + 1e-9),  # 0.29 · 100 → 29, not 28
            regrow_dropped=self.params.regrow_dropped,
        )
        ctx.train(spec, phase="train", callbacks=[callback])
        ctx.log(
            **{
                "rigl.updates": len(callback.updates),
                "rigl.changed_total": sum(u["rigl.changed"] for u in callback.updates),
            }
        )
