"""ECS: efficient computation sharing for multi-task scene understanding (Shoouri, Yang, Fan & Kim, ICCV 2023,
arXiv 2303.09663; reference code ``sarashoouri/EfficientMTL``, read at 6946429, no licence: read, not copied).

What it is. Not a pruning method: a *multi-model* method. One base task (segmentation in every reference
script) is trained as an ordinary dense single-task network; every other task (a sub-task) is that network
re-parametrised, W_t = W_b + δ_t with a sparse weight delta δ_t over every backbone parameter (convolution,
linear, normalisation weights and biases, the ViT's global token), and a dense head of its own. At inference
a sub-task may share the base's activations: at chosen layers its activation is replaced by the base's plus
the thresholded difference (:mod:`mtlprune.engine.models.delta`). The benchmark's model is a
:class:`~mtlprune.engine.models.delta.DeltaSharedMTL`; what is stored is the base, the non-zeros of the
deltas and the heads (``params_stored``; docs/accounting.md). The cell's target sparsity is the sparsity of
each sub-task's delta (``sparsity_axis = "delta"``, result keys ``sparsity.delta.<task>``), an axis of its
own that is never the pruning sparsity of the other methods.

The recipe, per sub-task, one after another against the frozen base (the reference's scripts Step 1–3):

1. *Gates* (diff pruning, Guo, Rush & Kim 2021, as the reference codes it). Every delta element has a
   hard-concrete gate z = clamp(σ(log u − log(1 − u) + α)·(r − l) + l, 0, 1), u ~ U(10⁻⁴, 1 − 10⁻⁴), no
   temperature, stretch (l, r) = ``stretch`` (−1.5, 1.5), logit α initialised to ``gate_init`` (5); with
   ``group_gates`` every tensor has one more such gate z₂, and the forward uses W_b + z·z₂·δ. δ starts at 0
   and trains with the new head (AdamW, β (0.9, 0.999), the finetune recipe's lr, ``delta_weight_decay``
   1e-6 except biases and the global token); the logits train with their own AdamW at ``gate_lr`` 0.1 with
   torch's default weight decay 0.01 (``gate_weight_decay``; the reference's ``optim.AdamW(lr=0.1)``, which
   pulls the logits towards 0) and their gradients clipped to norm ``gate_max_grad_norm`` 10 (the
   reference's clip acts on the logits only). The loss adds the expected L0 norm
   λ·Σ σ(α − log(−l/r)) over element and tensor gates, λ = ``l0_penalty`` (5e-8, the same for every layer).
2. *Fixed support*. The gates leave; the delta keeps a support, which is held (masks) while δ and the head
   train on without the L0 term. ``control: target`` (default) keeps exactly ⌈(1 − s)·N_t⌉ entries of
   the N_t in δ_t: the largest |ẑ·δ| (ẑ the deterministic gate, below; ties by |δ|, then position),
   Guo et al.'s projection, so the target is met exactly (counted from the stored weights); kept entries
   hold ẑ·δ (the function the gates trained), or δ where a closed gate left ẑ·δ at 0. ``control:
   faithful`` keeps the reference's rule: the support z·z₂·δ ≠ 0 of the last gate-phase training pass (its
   gate sample, δ before that step's update: what the reference's saved model holds), with the current raw
   δ on it (its Step 2 reloads p1), whatever sparsity that is (tolerance 1).
3. *Activation L1* (``ecs`` only). The support stays fixed; the loss adds ``act_penalty`` (2.5e-10) times
   Σ|a_t − a_b| over the base's and the sub-task's activations at the reference's hook points (ViT:
   ``norm1``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.act``, ``mlp.fc2`` of every block), the base
   run under no gradient beside it, so that the sub-task's activations stay close to the base's.

Evaluation. ``ecs``: activation sharing at the outputs of ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` (before
the GELU) and ``mlp.fc2`` of every block, |a_t − a_b| < τ_l set to the base's (the reference's
``act_tensor_diff_per_batch``), τ_l = ``act_threshold`` (0.15, the reference's default) for every block or
``act_thresholds`` one per block. ``ecs-weights``: phases 1–2 only and no activation sharing (τ = 0): the
storage-only variant. The base task is the base network itself.

Base and heads. ``base: single_task`` (default, faithful): the base is a dense stage of its own on
``data.tasks = [base_task]`` (the cell's first task by default), planned once per (data, arch, train, eval,
seed) through ``extra_stages`` and shared by every ECS cell of that setting; its steps count in the cell's
``steps_total``, the shared multi-task dense stage's do not (it is only the ΔT reference). ``base:
dense_mtl``: the shared dense multi-task checkpoint's backbone and base-task head are the base, so ECS starts
where the pruning methods start (its steps then count). ``heads: fresh`` (faithful): every sub-task head
starts from the shared initialisation (the dense stage's ``init.pt``); ``from_dense``: from the trained
dense multi-task model.

Budget. Each sub-task's three phases split the cell's finetune budget by ``phases`` (0.4/0.3/0.3; the gate
phase gets at least one step), with the finetune recipe's batch size and LR schedule shape; ``budget:
per_task`` (default) gives every sub-task the whole finetune budget, as the reference trains each sub-task
on its own schedule, so ``steps_method`` = (T − 1) × finetune steps; ``split`` divides the budget between the
sub-tasks. ``planned_steps`` is this arithmetic.

Deviations from the reference (also in docs/methods.md):

- Budgets are phases of the finetune budget, not epochs (the reference: 900/900/250 epochs, PolynomialLR
  over 120k iterations, whose horizon its own epochs exceed); the LR schedule's shape is the finetune
  recipe's, applied to the gates' and the delta's learning rates alike. One fresh optimizer per phase, as
  the reference's separate scripts.
- Evaluation uses deterministic gates where gates exist (Louizos et al.'s test-time estimate
  clamp(σ(α)(r − l) + l, 0, 1)); the reference evaluates and saves its last stochastic sample. After
  phase 1 the gates are gone in both controls, so this concerns only a ``best_val`` selection during phase 1.
- ``control: target`` (default) is Guo et al.'s exact projection at the target, not the reference's rule
  (kept as ``control: faithful``); the reference has no density target at all.
- Checkpoint selection: the last step (or ``eval.selection: best_val`` on a validation split) instead of the
  reference's best test-split metric (Step 1–2) or hard-coded bars (Step 3).
- The gradient routing is autograd's through W_b + z·z₂·δ; the reference routes by hand the same
  derivatives (dz/dα is the same product; the clamp's derivative at exactly 0 or 1 differs on a null set).
  Its clip at 10 over ``model.parameters()`` is a no-op for δ (it clips copies), so only the logits are
  clipped here too.
- Head weights decay towards 0 (AdamW on the weights); the reference's decoder is p0 + p1 with p1 decayed,
  i.e. towards its initialisation (at 1e-6 per step either is negligible). Layer norms' weights decay as in
  the reference (its no-decay list names ``LayerNorm.weight``, which the ViT's ``norm1``/``norm2`` never
  match). Per-task loss scales (2× CE for human parts, 50× edge, 5× saliency on PASCAL) are the benchmark's
  task losses as they are; the loss is the task's own.
- The L1 activation penalty and the L0 penalty use one coefficient for every layer (the reference's lists
  are uniform too; its per-layer index is mis-computed but harmless for that reason).
- CNN adaptation (ours; the reference has only the ViT): on an architecture without the ViT's module names
  the act and sharing points are the outputs of every convolution and linear layer of the backbone, with one
  threshold per such layer; BatchNorm γ/β get deltas like any parameter, and every task runs on the base's
  BN running statistics (the frozen base is always in eval mode; nothing re-estimates them).
- The base task's network is the base stage as trained (its head too); the reference trains it with
  layer-wise LR decay, drop-path and fp16, which the benchmark's dense recipe does not have.
- Activation sharing is simulated as the reference does (full sub-task activations, then thresholded): it
  saves no compute here. What it would save is counted from the data (``flops_shared``, the same rule as
  every model's ``flops_input_sparse``); ``flops_sparse``/``flops_dense`` are the static counts of the
  joint task set without sharing (docs/accounting.md).
- Temporal (video) sharing of the NYUD scripts is out of scope (the benchmark's data has no frames).

Recorded in ``method_state``: the base task, base and its run id, per sub-task the steps of each phase, the
delta's size, kept entries and density, the mean gate open probability and the share of deterministic gates
open at the end of phase 1, and the activation-sharing thresholds per layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mtlprune.engine.context import MethodContext
from mtlprune.engine.models.delta import DeltaSharedMTL, HardConcreteGates
from mtlprune.engine.train import Optimization, ParamGroup, StepRunner, TrainCallback
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.registry import METHODS
from mtlprune.spec import DenseSpec, RunSpec

NO_DECAY = ("bias", "global_tokens", "pos_emb")  # the reference's no-decay names that exist here
GATE_SALT = 18_000  # ctx.generator salt of the first sub-task's gate noise (+ its index)


# ------------------------------------------------------------------------------------- arithmetic


def keep_count(target: float, size: int) -> int:
    """⌈(1 − s)·N⌉ entries kept at delta sparsity s, in exact decimal arithmetic (0.7 is 7/10)."""
    return math.ceil((1 - Fraction(repr(float(target)))) * size)


def phase_steps(steps: int, fractions: tuple[float, ...]) -> list[int]:
    """``steps`` split by ``fractions`` (summing to 1) at rounded cumulative bounds, adding up exactly; the
    first phase (the gates) gets at least one step when there is one."""
    bounds, running = [], 0.0
    for f in fractions:
        running += f
        bounds.append(round(steps * running))
    bounds[-1] = steps
    if steps and bounds[0] == 0:
        bounds[0] = 1
    out, previous = [], 0
    for b in bounds:
        b = max(b, previous)
        out.append(b - previous)
        previous = b
    return out


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` steps in ``parts`` near-equal shares adding up to ``total`` (earlier ones get more)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def project_to_target(
    delta: Mapping[str, Tensor], gates: Mapping[str, Tensor], keep: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Guo et al.'s projection: keep the ``keep`` entries with the largest |g·δ| over all of a task's tensors
    (ties by |δ|, then by position), holding g·δ, or δ where g·δ is 0. Returns (new delta, keep-masks)."""
    names = list(delta)
    gated = {n: gates[n] * delta[n] for n in names}
    primary = torch.cat([gated[n].detach().abs().flatten().double().cpu() for n in names])
    secondary = torch.cat([delta[n].detach().abs().flatten().double().cpu() for n in names])
    order = torch.sort(secondary, descending=True, stable=True).indices
    order = order[torch.sort(primary[order], descending=True, stable=True).indices]
    flat = torch.zeros(primary.numel(), dtype=torch.bool)
    flat[order[:keep]] = True
    masks, values, offset = {}, {}, 0
    for n in names:
        size = delta[n].numel()
        mask = flat[offset : offset + size].view(delta[n].shape).to(delta[n].device)
        offset += size
        g, d = gated[n].detach(), delta[n].detach()
        values[n] = torch.where(mask, torch.where(g != 0, g, d), torch.zeros_like(d))
        masks[n] = mask
    return values, masks


def _record_task(ctx: MethodContext, task: str, **values: Any) -> None:
    """Add to ``method_state["tasks"][task]`` (kept by the context, so a resumed cell has it too)."""
    tasks = {t: dict(v) for t, v in ctx.recorded.get("tasks", {}).items()}
    tasks[task] = {**tasks.get(task, {}), **values}
    ctx.record(tasks=tasks)


# ------------------------------------------------------------------------------------- callbacks


class L0Penalty(TrainCallback):
    """λ·Σ P(z > 0) of a sub-task's gates, added to each step's loss (``extra.l0`` in the log)."""

    def __init__(self, gates: HardConcreteGates, coefficient: float) -> None:
        self.gates, self.coefficient = gates, coefficient

    def extra_loss(self, step: int, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"l0": self.coefficient * self.gates.expected_l0()}

    def after_step(self, step: int, runner: StepRunner) -> dict[str, float]:
        with torch.no_grad():
            count = sum(a.numel() for a in self.gates.elements.values())
            opened = sum(float((a > 0).sum()) for a in self.gates.elements.values())
        return {"ecs.gates_positive": opened / count}


class ActivationL1(TrainCallback):
    """c·Σ|a_t − a_b| over the act points of the step's forward pass (``extra.act_l1`` in the log)."""

    def __init__(self, model: DeltaSharedMTL, coefficient: float) -> None:
        self.model, self.coefficient = model, coefficient

    def extra_loss(self, step: int, outputs: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        l1 = self.model.act_l1
        return None if l1 is None else {"act_l1": self.coefficient * l1}


# ------------------------------------------------------------------------------------------ params


class EcsWeightsParams(MethodParams):
    base: Literal["single_task", "dense_mtl"] = Field(
        "single_task",
        description="'single_task': a dense stage on the base task alone, planned once per setting (the "
        "reference); 'dense_mtl': the shared dense multi-task model's backbone and base head",
    )
    base_task: str | None = Field(None, description="the base task; None: the cell's first task")
    control: Literal["target", "faithful"] = Field(
        "target",
        description="'target': exactly ceil((1-s)*N) delta entries per sub-task kept after the gate phase; "
        "'faithful': the support of the last gate sample, any sparsity",
    )
    heads: Literal["fresh", "from_dense"] = Field(
        "fresh", description="sub-task heads from the shared initialisation, or from the trained dense model"
    )
    budget: Literal["per_task", "split"] = Field(
        "per_task",
        description="'per_task': every sub-task trains on the finetune budget; 'split': the budget is "
        "divided between the sub-tasks",
    )
    phases: tuple[float, float] = Field(
        (0.4, 0.6), description="shares of a sub-task's budget: gate phase, fixed-support phase"
    )
    group_gates: bool = Field(True, description="a gate per tensor besides the gate per element")
    gate_init: float = Field(5.0, ge=-50.0, le=50.0, description="initial gate logit α")
    stretch: tuple[float, float] = Field((-1.5, 1.5), description="hard-concrete stretch interval (l, r)")
    l0_penalty: float = Field(5e-8, ge=0.0, description="λ of the expected-L0 penalty, every layer")
    gate_lr: float = Field(0.1, gt=0.0, description="learning rate of the gate logits (AdamW)")
    gate_weight_decay: float = Field(0.01, ge=0.0, description="AdamW decay of the gate logits")
    gate_max_grad_norm: float | None = Field(10.0, gt=0.0, description="clip of the logits' gradient norm")
    delta_weight_decay: float = Field(
        1e-6, ge=0.0, description="AdamW decay of delta and head weights (none on biases, global token)"
    )

    @model_validator(mode="after")
    def _valid(self) -> EcsWeightsParams:
        if any(f < 0 for f in self.phases) or abs(sum(self.phases) - 1.0) > 1e-9:
            raise ValueError(f"phases must be >= 0 and sum to 1, got {list(self.phases)}")
        if self.phases[0] <= 0:
            raise ValueError("the gate phase (phases[0]) needs a share > 0")
        low, high = self.stretch
        if not (low < 0.0 and high > 1.0):
            raise ValueError(
                f"stretch (l, r) needs l < 0 < 1 < r for exact zeros and ones, got {[low, high]}"
            )
        return self


class EcsParams(EcsWeightsParams):
    phases: tuple[float, float, float] = Field(  # type: ignore[assignment]
        (0.4, 0.3, 0.3), description="shares of a sub-task's budget: gates, fixed support, activation L1"
    )
    act_penalty: float = Field(2.5e-10, ge=0.0, description="c of the activation-L1 term of phase 3")
    act_threshold: float = Field(0.15, ge=0.0, description="activation-sharing threshold τ of every layer")
    act_thresholds: list[float] | None = Field(
        None, description="one threshold per sharing layer (ViT: per block), instead of act_threshold"
    )

    @model_validator(mode="after")
    def _thresholds(self) -> EcsParams:
        if self.act_thresholds is not None and any(t < 0 for t in self.act_thresholds):
            raise ValueError(f"act_thresholds must be >= 0, got {self.act_thresholds}")
        if self.act_thresholds is not None and "act_threshold" in self.model_fields_set:
            raise ValueError("give act_threshold or act_thresholds, not both")
        return self


# ------------------------------------------------------------------------------------------ methods


@METHODS.register("ecs-weights")
class EcsWeights(PruningMethod):
    """ECS with weight deltas only (Shoouri et al., ICCV 2023): base + sparse per-task deltas, no sharing."""

    Params = EcsWeightsParams
    starts_from = "base"
    sparsity_axis = "delta"
    step_kind = "masked"
    contract_params: ClassVar[dict[str, Any]] = {}
    share_activations: ClassVar[bool] = False

    def __init__(self, params: EcsWeightsParams) -> None:  # type: ignore[override]
        super().__init__(params)
        self.starts_from = "base" if params.base == "single_task" else "dense"
        if params.control == "faithful":
            self.sparsity_tolerance = 1.0  # the reference's rule does not aim at a density

    # ------------------------------------------------------------------------------------ planning

    def base_task(self, spec: RunSpec) -> str:
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        task = p.base_task or spec.data.tasks[0]
        if task not in spec.data.tasks:
            raise ValueError(f"base_task {task!r} is not one of the cell's tasks {list(spec.data.tasks)}")
        if len(spec.data.tasks) < 2:
            raise ValueError("ECS needs at least one sub-task besides the base task")
        return task

    def base_stage(self, spec: RunSpec) -> DenseSpec:
        """The single-task dense stage of the base task: same data, architecture, recipe, eval and seed."""
        data = spec.data.model_copy(update={"tasks": (self.base_task(spec),)})
        return DenseSpec(data=data, arch=spec.arch, train=spec.train, eval=spec.eval, seed=spec.seed)

    def extra_stages(self, spec: RunSpec) -> list[DenseSpec]:
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        self.task_budgets(spec)  # a cell it cannot run fails the config (base task, budget)
        return [self.base_stage(spec)] if p.base == "single_task" else []

    def task_budgets(self, spec: RunSpec) -> dict[str, list[int]]:
        """Each sub-task's phase steps, in training order."""
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        base = self.base_task(spec)
        subs = [t for t in spec.data.tasks if t != base]
        steps = spec.finetune.steps
        shares = [steps] * len(subs) if p.budget == "per_task" else split_steps(steps, len(subs))
        if min(shares) < 1:
            raise ValueError(
                f"budget 'split' leaves a sub-task no step: finetune.steps {steps} < {len(subs)}"
            )
        return {t: phase_steps(n, tuple(p.phases)) for t, n in zip(subs, shares, strict=True)}

    def planned_steps(self, spec: RunSpec) -> int:
        """Σ over sub-tasks of its phases' steps: (T − 1) × finetune steps (``per_task``) or the finetune
        steps (``split``)."""
        return sum(sum(phases) for phases in self.task_budgets(spec).values())

    # ----------------------------------------------------------------------------------------- run

    def build_model(self, ctx: MethodContext, base_task: str) -> DeltaSharedMTL:
        """The base (single-task stage or dense model), fresh or dense sub-task heads, zero deltas."""
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        if p.base == "single_task":
            base_state = ctx.stage_weights(self.base_stage(ctx.spec))
        else:
            base_state = ctx.dense_weights("final")
        state = dict(ctx.dense_weights("init" if p.heads == "fresh" else "final"))
        for key, value in base_state.items():
            if key.startswith("backbone.") or key.startswith(f"heads.{base_task}."):
                state[key] = value
        template = copy.deepcopy(ctx.model)
        template.load_state_dict(state)
        return DeltaSharedMTL(template.backbone, dict(template.heads), base_task)

    def groups(
        self, model: DeltaSharedMTL, task: str, gates: HardConcreteGates | None = None
    ) -> Optimization:
        """AdamW groups of one sub-task: its delta and head (decay ``delta_weight_decay``, none on biases and
        the global token), and while they exist its gate logits (``gate_lr``, decay, clip)."""
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        named = [*model.delta(task).items(), *model.heads[task].named_parameters()]
        decay = tuple(q for n, q in named if not any(k in n for k in NO_DECAY))
        no_decay = tuple(q for n, q in named if any(k in n for k in NO_DECAY))
        groups = [
            ParamGroup("decay", decay, weight_decay=p.delta_weight_decay),
            ParamGroup("no_decay", no_decay, weight_decay=0.0),
        ]
        if gates is not None:
            groups.append(
                ParamGroup(
                    "gates",
                    tuple(gates.logits()),
                    lr=p.gate_lr,
                    weight_decay=p.gate_weight_decay,
                    max_grad_norm=p.gate_max_grad_norm,
                )
            )
        return Optimization(tuple(g for g in groups if g.params), algorithm="adamw", betas=(0.9, 0.999))

    def run(self, ctx: MethodContext) -> None:
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        base_task = self.base_task(ctx.spec)
        model = self.build_model(ctx, base_task)
        ctx.replace_model(model)
        # Resume replays run() from the top, so everything used across ctx.train calls is read back from what
        # a checkpoint restores (the model, ctx.masks, ctx.recorded), never kept in locals here.
        for index, (task, steps) in enumerate(self.task_budgets(ctx.spec).items()):
            model.active_tasks = (task,)
            self.train_task(ctx, model, task, index, steps)
        model.active_tasks = None
        model.set_thresholds(self.thresholds(model))
        ctx.record(
            base_task=base_task,
            base=p.base,
            base_run_id=self.base_stage(ctx.spec).run_id
            if p.base == "single_task"
            else ctx.spec.dense().run_id,
            thresholds={str(layer): tau for layer, tau in model.layer_thresholds.items()},
        )

    def thresholds(self, model: DeltaSharedMTL) -> float | list[float]:
        return 0.0

    def train_task(
        self,
        ctx: MethodContext,
        model: DeltaSharedMTL,
        task: str,
        index: int,
        steps: list[int],
    ) -> None:
        """The phases of one sub-task; the masks held (every finished sub-task's) gain this task's."""
        p: EcsWeightsParams = self.params  # type: ignore[assignment]
        recipe = ctx.spec.finetune
        shapes = {n: t.shape for n, t in model.delta(task).items()}
        seed = ctx.generator(GATE_SALT + index).initial_seed()
        faithful = p.control == "faithful"
        gates = HardConcreteGates(shapes, p.gate_init, tuple(p.stretch), seed, p.group_gates, faithful)
        model.add_gates(task, gates)
        gates = model.gates[task]
        ctx.train(
            recipe.model_copy(update={"steps": steps[0]}),
            phase=f"gates:{task}",
            callbacks=[L0Penalty(gates, p.l0_penalty)],
            optimization=self.groups(model, task, gates),
        )
        delta = model.delta(task)
        size = sum(t.numel() for t in delta.values())
        with torch.no_grad():
            opened = float(gates.expected_l0()) / (size + len(gates.tensors))
            deterministic = gates.deterministic()
            open_share = sum(int((g > 0).sum()) for g in deterministic.values()) / size
            if p.control == "target":
                keep = keep_count(ctx.target, size)
                values, task_masks = project_to_target(delta, deterministic, keep)
            else:  # the reference: the support of the last training pass (z·z₂·δ ≠ 0), raw δ on it
                task_masks = gates.last_support()
                values = {n: torch.where(task_masks[n], delta[n], torch.zeros_like(delta[n])) for n in delta}
            for n, value in values.items():
                delta[n].copy_(value)
        model.remove_gates(task)
        _record_task(
            ctx, task, steps=steps, delta_params=size, gate_open_probability=opened, gates_open=open_share
        )
        masks = dict(ctx.masks or {})
        masks.update({model.delta_name(task, n): m for n, m in task_masks.items()})
        ctx.apply_masks(masks)
        if steps[1]:
            ctx.train(
                recipe.model_copy(update={"steps": steps[1]}),
                phase=f"fixed:{task}",
                optimization=self.groups(model, task),
            )
        self.after_fixed(ctx, model, task, steps)
        for param in [*model.delta(task).values(), *model.heads[task].parameters()]:
            param.grad = None  # the task is done: no stale gradient outlives its training
        nonzero = sum(int(torch.count_nonzero(t.detach())) for t in model.delta(task).values())
        ctx.log(**{f"ecs.delta_density.{task}": nonzero / size})
        _record_task(ctx, task, delta_nonzero=nonzero, delta_density=nonzero / size)

    def after_fixed(self, ctx: MethodContext, model: DeltaSharedMTL, task: str, steps: list[int]) -> None:
        """Phase 3 (``ecs``); nothing for the weights-only variant."""


@METHODS.register("ecs")
class Ecs(EcsWeights):
    """ECS (Shoouri et al., ICCV 2023): base + sparse per-task weight deltas + activation sharing."""

    Params = EcsParams
    share_activations = True

    def after_fixed(self, ctx: MethodContext, model: DeltaSharedMTL, task: str, steps: list[int]) -> None:
        p: EcsParams = self.params  # type: ignore[assignment]
        if len(steps) < 3 or not steps[2]:
            return
        model.act_penalty = True
        try:
            ctx.train(
                ctx.spec.finetune.model_copy(update={"steps": steps[2]}),
                phase=f"act:{task}",
                callbacks=[ActivationL1(model, p.act_penalty)],
                optimization=self.groups(model, task),
            )
        finally:
            model.act_penalty = False

    def thresholds(self, model: DeltaSharedMTL) -> float | list[float]:
        p: EcsParams = self.params  # type: ignore[assignment]
        return p.act_thresholds if p.act_thresholds is not None else p.act_threshold


__all__ = ["Ecs", "EcsParams", "EcsWeights", "EcsWeightsParams", "keep_count", "phase_steps"]
