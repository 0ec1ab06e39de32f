"""DiSparse: disentangled per-task sparsification of a multi-task network, in its three variants.

Paper: Sun, Hassani, Wang, Huang, Shi, "DiSparse: Disentangled Sparsification for Multitask Model
Compression", CVPR 2022, arXiv 2206.04662. Reference code: SHI-Labs/DiSparse-Multitask-Model-Compression
(read, never copied: the repository has no licence; what the benchmark follows is in docs/methods.md).

Each task t has a pool: every backbone weight plus its own head's weights (``ctx.component_of``). Each task
ranks its pool by its own score and keeps its top fraction r under one global threshold per task (across
layers); a head keeps its own task's mask; a backbone weight survives if ANY task keeps it (the paper's
"unanimous" arbiter: pruned only when every task agrees).

- ``disparse-static`` (starts from ``init``): score_t = Σ_b |∂L_t/∂w ⊙ w| over ``batches`` training batches,
  L_t the task's own loss (``ctx.task_losses``, no λ), on a scoring copy whose conv and linear weights are
  re-initialised with Xavier-normal (``scoring_init: xavier``, the default, as the reference) or are the
  initialisation that will be trained (``scoring_init: as_initialised``); the mask is applied to the model as
  initialised either way; fixed-mask training on ``ctx.sparse_training_spec()``.
- ``disparse-pretrained`` (starts from ``dense``): the same selection on the trained dense model with
  ``criterion: magnitude`` (score_t = |w| for every task, the reference's NYU-v2/Cityscapes criterion) or
  ``criterion: gradient`` (score_t = (Σ_b |∂L_t/∂w|)·w², its Taskonomy criterion); ``criterion: auto`` (the
  default) picks per dataset as the reference does (``taskonomy`` → gradient, every other dataset →
  magnitude) and records the one that ran as ``criterion`` in ``method_state``; then ``ctx.finetune()``.
- ``disparse-dynamic`` (starts from ``init``): a random mask with ERK layer densities (power ``erk_power``),
  then every ``delta_t`` steps while t < t_end = ⌊end·T⌋ (t = 0 included): each layer drops
  ⌊α_t·k_l⌋ of its k_l active weights by |w|, α_t = ½·α₀·(1 + cos(π t / t_end)), α₀ = ``prune_rate``, and
  grows as many back from each task's own dense gradient |∂L_t/∂w|; after t_end the mask is fixed.

Keep-ratio solver (:func:`disentangled_masks`): instead of the reference's hand-tuned per-task keep ratios
(one per dataset and sparsity), one ratio r, the same for every task as in the reference, is solved so the
union keeps exactly N − round(target·N) weights. Task t keeps its top ⌊r·N_t⌋ (N_t = its pool size), so a
weight at 0-based rank p of task t enters at r = (p + 1)/N_t and is kept by the union from
ρ(w) = min_t (p_t(w) + 1)/N_t on: the union's size is monotone in r, and the exact solution of the
bisection is the (N − round(target·N))-th smallest ρ. The final mask is exactly the weights with the
smallest ρ (ties between tasks at the solved r broken by flat position, backbone first); each task's
recorded mask is the prefix of its own ranking that the final mask contains (its top ⌊r·N_t⌋, or one fewer
for a task that lost a tie), so the union of the recorded per-task backbone masks IS the final backbone
mask and every head mask is its task's mask. The sparsity counted from the weights is exact to one weight.
Entry ratios are compared in float64: distinct ratios (p + 1)/N_t of different tasks stay distinct for pools
below about 10^8 weights each.

Deliberate deviations from the paper and the reference code, all of them:

- Keep ratios are solved (above), not the hand-tuned constants of ``create_pruned_net.py``; every task uses
  the same r. Selection is an exact top-k with ties broken by position, not "score ≥ the k-th largest"
  (which keeps every tie, and a whole layer when the threshold is 0).
- Static scoring copy (``scoring_init``). The reference (``prune_utils.py:29-38``, ``disparse_prune_static``)
  deep-copies the freshly built network, re-initialises the weight of every ``nn.Conv2d`` and ``nn.Linear``
  of the copy with ``nn.init.xavier_normal_`` (gain 1; biases and BatchNorm untouched), in ``modules()``
  order, scores the copy, and writes the masks into the ORIGINAL network (L113-183), whose weights were
  never re-initialised (backbone N(0, 0.01), heads PyTorch's default). ``scoring_init: xavier`` (default)
  does the same, except where the draws come from: the reference draws from the global (CUDA) RNG,
  unseeded in ``create_pruned_net.py``, so its masks are not reproducible; here every weight is drawn with
  ``nn.init.xavier_normal_`` on a CPU tensor of the weight's dtype from a dedicated generator,
  ``ctx.generator(XAVIER_SALT)`` (seeded by the cell's seed), in ``modules()`` order, then copied to the
  device: a run id determines the draws, on any device, and the global RNG is not touched.
  ``scoring_init: as_initialised`` scores the initialisation that is trained (true connection sensitivity
  of the trained network; the only behaviour before issue #20). The pretrained and dynamic variants score
  copies of the current weights in the reference too (``prune_utils.py:196, 349``;
  ``dynamic_prune.py:329-330`` loads the current state into a fresh net), never a re-initialised one, so
  they have no such option. The static choice is recorded as ``scoring_init`` in ``method_state``.
  The scoring copy is in train mode (BN with batch statistics, as the reference) with dropout OFF (the
  reference keeps it on): the ASPP heads' Dropout(0.5) would make the score a draw from the global RNG;
  with it off the selection is deterministic and the copy, discarded afterwards, leaves the model and its
  BN statistics untouched. ``batches`` defaults to 10 (reference: 50 × 16 images, too slow for the CPU
  demo); batches come from ``ctx.batches`` (the training augmentation, a seeded order of their own). One
  forward pass per batch serves every task (one backward per task; the reference runs one forward per task,
  the same with dropout off). Σ_b |g_b ⊙ w| (a sum of per-batch absolute sensitivities, as the reference),
  unnormalised: the reference divides each task's scores by their sum, which changes no ranking, and the
  solver is rank-based.
- Pretrained: the checkpoint is the cell's shared dense model (no hard-coded paths); the ``gradient``
  criterion scores on the same train-mode, dropout-off copy with each task's own loss. The criterion
  follows the dataset as in the reference (``create_pruned_net.py:72-120``: ``disparse_prune_pretrained_l1``
  for NYU-v2 and Cityscapes, ``disparse_prune_pretrained`` for Taskonomy) under ``criterion: auto``;
  datasets the reference does not have get its NYU-v2 choice, magnitude. Fine-tuning uses the cell's
  finetune budget and recipe (the reference: 1000 iterations at a constant 1e-5 because its scheduler is
  bound to the old optimizer).
- Dynamic, ERK: raw_l = (Σ dims / Π dims)^``erk_power`` (0.9 as the reference's ``googleAI_ERK``; 1.0
  gives ``mtlprune.engine.sparsity.erk_densities`` exactly), one ε for all layers, layers above density 1
  made dense and ε re-solved; per-layer counts rounded by largest remainders so the total is exactly
  round(target·N); the random initial mask has exact per-layer counts from ``ctx.generator()``.
  ``backbone.conv1`` is not exempted (the reference's ``erk_init`` skips it; moot where ERK makes it dense).
- Dynamic, counts: each layer keeps exactly its ERK count after every update, so the overall target holds
  after every update (the reference's union regrowth overshoots d_l until the next prune). The drop count
  is ⌊α_t·k_l⌋ of the active weights (RigL's convention), i.e. the layer is pruned to ⌈(1 − α_t)·k_l⌉
  rather than to d_l·(1 − α_t) through ``prune.l1_unstructured``'s rounding.
- Dynamic, growth: candidates are the weights inactive after the drop (just-dropped ones included, as the
  reference). Each task ranks the candidates by its own |∂L_t/∂w| (heads: only their task). A head grows
  its task's top-n. A backbone layer grows the union of the tasks' top-m for the largest m that fits, then
  completes to exactly n by best per-task rank (a candidate ranked i-th by some task comes before every
  candidate no task ranks better than (i+1)-th; ties by position): the union arbiter with one common
  per-task grow count, trimmed so the layer's count is exact (the reference ORs every task's full top-n
  and lets the next prune remove the excess). Candidates whose gradient is exactly zero for every task
  are never grown (they would stay zero and leave the model sparser than its mask, as in ``rigl``); if too
  few candidates have a non-zero gradient, just-dropped weights come back by |w|.
- Dynamic, gradients: each task's dense gradient comes from the trainer's own forward pass of the update
  step (``TrainCallback.loss_weights`` receives the step's task losses; one ``torch.autograd.grad`` per
  task with the graph retained, before the trainer's backward of the weighted sum): the current batch, as
  the reference, but whole (the reference splits it into 2 or 8 chunks only to save memory) and at the
  current sparse weights (pruned weights are zero; the reference's dense pass uses their stale values).
- Dynamic, regrowth: newly grown weights start at exactly zero (as RigL; the reference keeps their stale
  ``weight_orig`` values) and their optimizer slots (Adam moments, SGD momentum) are zeroed
  (``rigl.reset_optimizer_state``; the reference carries the old state over). A weight dropped and regrown
  in the same update simply stays active with its value and state. The update happens after the backward
  pass of the update step, and that step's optimizer update is taken with the new mask (as ``rigl``).
- Dynamic, end: the reference crashes at END (``copy_v2`` is undefined); here the mask is simply frozen
  from t_end on (it is already at the ERK counts, so no final prune is needed) and training continues to T
  on the at-init budget (dense + finetune steps on the dense recipe; the reference: 15k of 20k iterations).
- Dynamic: no per-task keep mask exists (pruning is task-agnostic by magnitude; only growth is per task),
  so no ``task_masks.npz`` is written. Each update logs ``disparse.grow_overlap``, the IoU of the tasks'
  top-n grow sets over the backbone.
- Logging: the static/pretrained selection logs ``disparse.keep_ratio``, the sparsity overall and per
  component, each task's kept fraction of its pool and the backbone IoU of the per-task masks (the paper's
  §2.7 analysis, totalled); per-layer IoUs follow from ``task_masks.npz``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlprune.engine.context import MethodContext, scoring_copy
from mtlprune.engine.models.mtl import PRUNABLE_TYPES
from mtlprune.engine.sparsity import Masks, erk_densities, layer_prune_counts
from mtlprune.engine.train import StepRunner
from mtlprune.methods.base import MethodParams, OneShotMethod, PruningMethod
from mtlprune.methods.rigl import MaskUpdateCallback, reset_optimizer_state, rigl_drop_fraction
from mtlprune.methods.scoring import weight_grads
from mtlprune.registry import METHODS

TaskLossFn = Callable[[Mapping[str, Tensor], Mapping[str, Any]], Mapping[str, Tensor]]
TaskMasks = dict[str, Masks]
TaskScores = Mapping[str, Mapping[str, Tensor]]

# ------------------------------------------------------------------------------------------ pools


def task_pools(
    names: Iterable[str], tasks: Sequence[str], component_of: Callable[[str], str]
) -> dict[str, list[str]]:
    """Each task's pool of prunable weights: every backbone tensor plus its own head's, in model order."""
    names = list(names)
    components = {n: component_of(n) for n in names}
    known = {"backbone", *(f"head/{t}" for t in tasks)}
    orphans = [n for n, c in components.items() if c not in known]
    if orphans:
        raise ValueError(f"prunable tensors outside the backbone and the tasks' heads: {orphans[:3]}")
    return {t: [n for n in names if components[n] in ("backbone", f"head/{t}")] for t in tasks}


# ------------------------------------------------------------------------------ keep-ratio solver


def disentangled_masks(
    task_scores: TaskScores, pools: Mapping[str, Sequence[str]], target: float
) -> tuple[Masks, TaskMasks, float]:
    """Per-task top-r selection over each task's pool, combined by OR, with r solved for the exact target.

    ``task_scores[t][name]``: task t's score of every tensor in ``pools[t]`` (higher = keep). A tensor in
    several pools (the backbone) is kept where any of those tasks keeps it; a tensor in one pool (a head)
    takes that task's mask. Returns ``(final_masks, per_task_masks, keep_ratio)``: exactly
    N − round(target·N) weights kept in ``final_masks``; ``per_task_masks[t]`` covers ``pools[t]`` and is a
    prefix of t's ranking (ties in scores by position); the union of the per-task masks equals the final
    masks. ``keep_ratio`` is the smallest r whose union of per-task top-⌊r·N_t⌋ keeps at least that many
    weights (N_t = |pool t|); see the module docstring.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    if not pools or not any(pools.values()):
        raise ValueError("no pools given")
    names = list(dict.fromkeys(n for pool in pools.values() for n in pool))
    shapes: dict[str, torch.Size] = {}
    device: torch.device | None = None
    for task, pool in pools.items():
        if len(set(pool)) != len(pool):
            raise ValueError(f"the pool of {task!r} names a tensor twice")
        if task not in task_scores:
            raise KeyError(f"no scores for task {task!r}")
        for name in pool:
            if name not in task_scores[task]:
                raise KeyError(f"task {task!r} has no score for {name!r} of its pool")
            shape = task_scores[task][name].shape
            if shapes.setdefault(name, shape) != shape:
                raise ValueError(f"{name!r} is scored with shapes {tuple(shapes[name])} and {tuple(shape)}")
            device = device or task_scores[task][name].device
    offsets: dict[str, int] = {}
    total = 0
    for name in names:
        offsets[name] = total
        total += math.prod(shapes[name])
    # ρ(w) = min over the tasks that hold w of (its 0-based rank in the task's ranking + 1) / |pool|.
    entry = torch.full((total,), math.inf, dtype=torch.float64, device=device)
    rho: dict[str, Tensor] = {}
    where: dict[str, Tensor] = {}
    for task, pool in pools.items():
        flat = torch.cat([task_scores[task][n].detach().flatten().to(device, torch.float64) for n in pool])
        if not torch.isfinite(flat).all():
            raise ValueError(f"scores of task {task!r} contain NaN or inf")
        size = flat.numel()
        order = torch.sort(flat, descending=True, stable=True).indices
        ratios = torch.empty(size, dtype=torch.float64, device=device)
        ratios[order] = torch.arange(1, size + 1, dtype=torch.float64, device=device) / size
        index = torch.cat(
            [torch.arange(offsets[n], offsets[n] + math.prod(shapes[n]), device=device) for n in pool]
        )
        entry[index] = torch.minimum(entry[index], ratios)
        rho[task], where[task] = ratios, index
    n_keep = total - round(target * total)
    ranked = torch.sort(entry, stable=True).indices
    final = torch.zeros(total, dtype=torch.bool, device=device)
    final[ranked[:n_keep]] = True
    ratio = float(entry[ranked[n_keep - 1]]) if n_keep > 0 else 0.0

    def unflatten(flat: Tensor, pool: Sequence[str]) -> Masks:
        out, offset = {}, 0
        for n in pool:
            size = math.prod(shapes[n])
            out[n] = flat[offset : offset + size].view(shapes[n])
            offset += size
        return out

    per_task = {
        task: unflatten((rho[task] < ratio) | ((rho[task] == ratio) & final[where[task]]), pool)
        for task, pool in pools.items()
    }
    return unflatten(final, names), per_task, ratio


# ----------------------------------------------------------------------------------------- scores


# Salt of ctx.generator for the Xavier re-initialisation of the static scoring copy (scoring_init: xavier).
XAVIER_SALT = 2022


@torch.no_grad()
def xavier_reinit(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise the weight of every Conv2d and Linear of ``net`` in place with Xavier-normal (gain 1).

    As the reference's static scoring copy (``nn.init.xavier_normal_`` on every conv/linear weight, in
    ``modules()`` order; biases and norm layers untouched), but drawn from ``generator`` on a CPU tensor of
    the weight's dtype and copied to the weight's device, so the values depend on the generator only (not
    on the global RNG, nor on the device). Returns ``net``.
    """
    for module in net.modules():
        if isinstance(module, PRUNABLE_TYPES):
            weight = module.weight
            draw = torch.empty(weight.shape, dtype=weight.dtype)
            nn.init.xavier_normal_(draw, generator=generator)
            weight.copy_(draw.to(weight.device))
    return net


def task_gradient_sums(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    task_losses: TaskLossFn,
    pools: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, Tensor]]:
    """Σ_b |∂L_t/∂w| of each task's own loss over its pool, on a copy (train-mode BN, dropout off).

    ``task_losses(outputs, batch)`` returns every task's loss of one forward pass (one pass per batch serves
    all tasks). ``model`` is not changed.
    """
    return _gradient_sums(scoring_copy(model), batches, task_losses, pools)


def _scoring_net(model: nn.Module, reinit: torch.Generator | None) -> nn.Module:
    """The copy scores are taken on: :func:`scoring_copy`, Xavier re-initialised when ``reinit`` is given."""
    net = scoring_copy(model)
    return net if reinit is None else xavier_reinit(net, reinit)


def _gradient_sums(
    net: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    task_losses: TaskLossFn,
    pools: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, Tensor]]:
    """Σ_b |∂L_t/∂w| of each task's own loss over its pool, on ``net`` itself (already a scoring copy)."""
    params = dict(net.named_parameters())
    weights = {t: [params[n] for n in pool] for t, pool in pools.items()}
    sums = {t: [torch.zeros_like(w) for w in ws] for t, ws in weights.items()}
    tasks = list(pools)
    seen = 0
    for batch in batches:
        losses = task_losses(net(batch["input"]), batch)
        for i, task in enumerate(tasks):
            grads = weight_grads(losses[task], weights[task], retain_graph=i < len(tasks) - 1)
            for acc, g in zip(sums[task], grads, strict=True):
                acc.add_(g.detach().abs())
        seen += 1
    if seen == 0:
        raise ValueError("DiSparse scoring needs at least one batch")
    return {t: dict(zip(pools[t], sums[t], strict=True)) for t in tasks}


def static_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    task_losses: TaskLossFn,
    pools: Mapping[str, Sequence[str]],
    reinit: torch.Generator | None = None,
) -> dict[str, dict[str, Tensor]]:
    """DiSparse static: Σ_b |∂L_t/∂w ⊙ w| per task (SNIP connection sensitivity of each task's own loss).

    Taken on a scoring copy of ``model``; with ``reinit`` the copy's conv and linear weights are first
    re-initialised from that generator (:func:`xavier_reinit`, the reference's scoring copy) and both the
    gradients and the w of the score are the copy's. ``model`` is not changed.
    """
    net = _scoring_net(model, reinit)
    params = dict(net.named_parameters())
    sums = _gradient_sums(net, batches, task_losses, pools)
    return {t: {n: g * params[n].detach().abs() for n, g in s.items()} for t, s in sums.items()}


def gradient_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    task_losses: TaskLossFn,
    pools: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, Tensor]]:
    """DiSparse pretrained, gradient criterion (the reference's Taskonomy one): (Σ_b |∂L_t/∂w|)·w²."""
    params = dict(model.named_parameters())
    sums = task_gradient_sums(model, batches, task_losses, pools)
    return {t: {n: g * params[n].detach().square() for n, g in s.items()} for t, s in sums.items()}


def magnitude_scores(model: nn.Module, pools: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Tensor]]:
    """DiSparse pretrained, magnitude criterion (the reference's NYU-v2/Cityscapes one): |w|, every task."""
    params = dict(model.named_parameters())
    return {t: {n: params[n].detach().abs() for n in pool} for t, pool in pools.items()}


# ------------------------------------------------------------------------------------------- ERK


def erk_keep_counts(shapes: Mapping[str, tuple[int, ...]], target: float, power: float) -> dict[str, int]:
    """Weights kept per layer: ERK densities (with the reference's ``power``) rounded by largest remainders
    so exactly round(target·N) go, as the shared ``erk`` scope of mtlprune.engine.sparsity.select_masks
    rounds."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    pruned = layer_prune_counts(sizes, erk_densities(shapes, target, power), target)
    return {n: sizes[n] - pruned[n] for n in sizes}


def random_masks(
    shapes: Mapping[str, tuple[int, ...]], keep: Mapping[str, int], generator: torch.Generator
) -> Masks:
    """A uniformly random mask per layer with exactly ``keep[name]`` weights (the lowest draws are pruned)."""
    masks: Masks = {}
    for name, shape in shapes.items():
        draws = torch.rand(shape, generator=generator).flatten()
        mask = torch.ones_like(draws, dtype=torch.bool)
        mask[torch.sort(draws, stable=True).indices[: draws.numel() - keep[name]]] = False
        masks[name] = mask.view(shape)
    return masks


# ------------------------------------------------------------------------------ dynamic updates


@torch.no_grad()
def union_grow(task_grads: Sequence[Tensor], candidates: Tensor, n: int) -> tuple[Tensor, list[Tensor]]:
    """Up to ``n`` candidates to grow from per-task gradients: the union arbiter, trimmed to exactly n.

    Each task ranks the candidates with a non-zero gradient by |g_t| (ties by position); a candidate's key
    is its best rank over the tasks; the ``n`` smallest keys grow (ties by position). So the union of every
    task's top-m grows for the largest m that fits, completed from the tasks' (m+1)-th choices. Fewer than
    ``n`` grow when fewer candidates have a non-zero gradient. Returns the flat grown mask and each task's
    own top-n (flat, for analysis).
    """
    cand = candidates.detach().flatten().to(torch.bool)
    size = cand.numel()
    missing = torch.full((size,), size + 1, dtype=torch.long, device=cand.device)
    best = missing.clone()
    tops: list[Tensor] = []
    for grad in task_grads:
        score = grad.detach().flatten().abs().to(device=cand.device, dtype=torch.float64)
        eligible = cand & (score > 0)
        order = torch.sort(torch.where(eligible, score, -1.0), descending=True, stable=True).indices
        rank = torch.empty(size, dtype=torch.long, device=cand.device)
        rank[order] = torch.arange(size, device=cand.device)
        rank = torch.where(eligible, rank, missing)
        best = torch.minimum(best, rank)
        tops.append(rank < n)
    grown = torch.zeros(size, dtype=torch.bool, device=cand.device)
    take = min(int(n), int((best < missing).sum()))
    if take > 0:
        grown[torch.sort(best, stable=True).indices[:take]] = True
    return grown, tops


@torch.no_grad()
def disparse_layer_update(
    weight: Tensor, task_grads: Sequence[Tensor], mask: Tensor, n: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One layer's update: drop the ``n`` active weights of smallest |w|, grow ``n`` by :func:`union_grow`.

    ``task_grads``: the dense gradient of each task whose pool holds the layer (one for a head, every task
    for the backbone). If fewer than ``n`` candidates have a non-zero gradient, just-dropped weights come
    back by |w|, so the active count never changes. Returns (new mask, newly active weights, each task's
    top-n grow set), shaped like ``mask``.
    """
    active = mask.detach().flatten().to(device=weight.device, dtype=torch.bool)
    n = min(int(n), int(active.sum()))
    if n <= 0:
        return mask.detach().to(torch.bool).clone(), torch.zeros_like(mask, dtype=torch.bool), []
    w = weight.detach().flatten().abs().to(torch.float64)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=w.device)
    kept = active.clone()
    kept[torch.sort(torch.where(active, w, inf), stable=True).indices[:n]] = False
    dropped = active & ~kept
    grown, tops = union_grow(task_grads, ~kept, n)
    short = n - int(grown.sum())
    if short > 0:  # too few candidates with a gradient: dropped weights (non-zero values) come back
        back = dropped & ~grown
        grown[torch.sort(torch.where(back, w, -inf), descending=True, stable=True).indices[:short]] = True
    new = kept | grown

    def shaped(flat: Tensor) -> Tensor:
        return flat.view(mask.shape).to(mask.device)

    return shaped(new), shaped(new & ~active), [shaped(t) for t in tops]


class DisparseDynamicCallback(MaskUpdateCallback):
    """Every ``delta_t`` steps before ``end_step``: magnitude drop, per-task gradient regrowth (union)."""

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        pools: Mapping[str, Sequence[str]],
        delta_t: int,
        prune_rate: float,
        end_step: int,
    ) -> None:
        super().__init__()
        self.params, self.pools = dict(params), {t: list(p) for t, p in pools.items()}
        self.delta_t, self.prune_rate, self.end_step = delta_t, prune_rate, end_step
        self.tasks_of = {n: [t for t, pool in self.pools.items() if n in pool] for n in self.params}
        self._grads: dict[str, dict[str, Tensor]] | None = None

    def is_update_step(self, step: int) -> bool:
        return step % self.delta_t == 0 and step < self.end_step

    def loss_weights(self, step: int, losses: Mapping[str, Tensor]) -> None:
        """At an update step, each task's dense gradient of its own loss on this step's forward pass.

        Called before the trainer's backward of the weighted sum, so the graph is retained for it; the
        recipe's loss weights are left as they are (returns None).
        """
        if not self.is_update_step(step):
            return None
        self._grads = {}
        for task, pool in self.pools.items():
            grads = weight_grads(losses[task], [self.params[n] for n in pool], retain_graph=True)
            self._grads[task] = {n: g.detach() for n, g in zip(pool, grads, strict=True)}
        return None

    def after_backward(self, step: int, runner: StepRunner) -> None:
        if not self.is_update_step(step) or runner.masks is None or self._grads is None:
            return
        grads, self._grads = self._grads, None
        rate = rigl_drop_fraction(step, self.prune_rate, self.end_step)
        new_masks: Masks = {}
        changed = inter = union = kept = total = 0
        for name, mask in runner.masks.items():
            param = runner.params[name]
            n = int(rate * int(mask.sum()))  # ⌊α_t · k_l⌋
            task_grads = [grads[t][name] for t in self.tasks_of[name]]
            new, grown, tops = disparse_layer_update(param, task_grads, mask.to(param.device), n)
            reset_optimizer_state(runner.optimizer, param, grown)
            changed += int(grown.sum())
            if len(tops) > 1:
                inter += int(torch.stack(tops).all(0).sum())
                union += int(torch.stack(tops).any(0).sum())
            new_masks[name] = new.cpu()
            kept += int(new.sum())
            total += new.numel()
        # The gradient is masked with the new masks next: this step already trains the new topology.
        runner.set_masks(new_masks)
        scalars = {
            "disparse.prune_rate": rate,
            "disparse.changed": float(changed),
            "disparse.sparsity": 1.0 - kept / total,
            "disparse.grow_overlap": inter / union if union else 1.0,
        }
        self.record_update(step, scalars)


# ------------------------------------------------------------------------------------------ methods


class DisparseStaticParams(MethodParams):
    batches: int = Field(
        10, ge=1, le=10_000, description="scoring batches summed per task (reference: 50; 10 for a CPU demo)"
    )
    batch_size: int | None = Field(None, ge=1, description="scoring batch size; default: train.batch_size")
    scoring_init: Literal["xavier", "as_initialised"] = Field(
        "xavier",
        description="weights of the scoring copy: Xavier-normal re-initialised from the cell's seed (the "
        "reference's copy) or the initialisation that is trained; the mask applies to the latter either way",
    )


# The reference's pretrained criterion per dataset (create_pruned_net.py:72-120); other datasets: magnitude.
REFERENCE_CRITERION: dict[str, Literal["magnitude", "gradient"]] = {
    "nyuv2": "magnitude",
    "cityscapes": "magnitude",
    "taskonomy": "gradient",
}


def resolve_criterion(criterion: str, dataset: str) -> Literal["magnitude", "gradient"]:
    """The criterion ``disparse-pretrained`` runs: ``auto`` → the reference's choice for ``dataset``."""
    if criterion == "auto":
        return REFERENCE_CRITERION.get(dataset, "magnitude")
    if criterion not in ("magnitude", "gradient"):
        raise ValueError(f"unknown DiSparse criterion {criterion!r}")
    return criterion  # type: ignore[return-value]


class DisparsePretrainedParams(MethodParams):
    criterion: Literal["auto", "magnitude", "gradient"] = Field(
        "auto",
        description="per-task score: |w| (reference NYU-v2/Cityscapes), (Σ_b |∂L_t/∂w|)·w² (Taskonomy), or "
        "auto: the reference's choice for the cell's dataset (taskonomy: gradient, others: magnitude)",
    )
    batches: int = Field(10, ge=1, le=10_000, description="scoring batches of the gradient criterion")
    batch_size: int | None = Field(None, ge=1, description="scoring batch size; default: train.batch_size")


class DisparseDynamicParams(MethodParams):
    delta_t: int = Field(50, ge=1, description="optimizer steps between mask updates (reference INT: 50)")
    prune_rate: float = Field(
        0.5, gt=0.0, le=1.0, description="initial drop fraction α₀ of the cosine schedule (reference: 0.5)"
    )
    end: float = Field(
        0.75, gt=0.0, le=1.0, description="fraction of training after which the mask is fixed (END/MAX_ITERS)"
    )
    erk_power: float = Field(
        0.9, gt=0.0, le=2.0, description="power on the ERK ratio Σdims/Πdims (reference 0.9; RigL 1.0)"
    )


def _log_selection(ctx: MethodContext, final: Masks, per_task: TaskMasks, ratio: float) -> None:
    """Keep ratio, sparsity overall and per component, per-task kept fraction, backbone IoU of the tasks."""
    pruned: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, mask in final.items():
        z, n = int((~mask).sum()), mask.numel()
        for key in ("overall", ctx.component_of(name)):
            pruned[key] = pruned.get(key, 0) + z
            total[key] = total.get(key, 0) + n
    scalars: dict[str, float] = {
        "disparse.keep_ratio": ratio,
        "disparse.sparsity": pruned["overall"] / total["overall"],
    }
    for key in total:
        if key != "overall":
            scalars[f"disparse.sparsity.{key.replace('/', '.')}"] = pruned[key] / total[key]
    for task, masks in per_task.items():
        kept = sum(int(m.sum()) for m in masks.values())
        scalars[f"disparse.task_density.{task}"] = kept / sum(m.numel() for m in masks.values())
    shared = [n for n in final if ctx.component_of(n) == "backbone"]
    if shared and len(per_task) > 1:
        inter = sum(int(torch.stack([per_task[t][n] for t in per_task]).all(0).sum()) for n in shared)
        union = sum(int(torch.stack([per_task[t][n] for t in per_task]).any(0).sum()) for n in shared)
        scalars["disparse.backbone_iou"] = inter / union if union else 1.0
    ctx.log(**scalars)
    ctx.record(**{k.removeprefix("disparse."): v for k, v in scalars.items()})


def _task_losses(ctx: MethodContext) -> TaskLossFn:
    def fn(outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Mapping[str, Tensor]:
        return ctx.task_losses(outputs, batch)

    return fn


class _Disentangled(OneShotMethod):
    """One-shot disentangled selection: per-task scores → per-task top-r → union in the backbone."""

    sparsity_tolerance: ClassVar[float] = 0.001

    def task_scores(self, ctx: MethodContext, pools: Mapping[str, Sequence[str]]) -> TaskScores:
        raise NotImplementedError

    def masks(self, ctx: MethodContext) -> Masks:
        """The final keep-masks at the cell's target; records each task's own mask (model unchanged)."""
        pools = task_pools(ctx.prunable(), ctx.tasks, ctx.component_of)
        final, per_task, ratio = disentangled_masks(self.task_scores(ctx, pools), pools, ctx.target)
        ctx.record_task_masks(per_task)
        _log_selection(ctx, final, per_task, ratio)
        return final


@METHODS.register("disparse-static")
class DisparseStatic(_Disentangled):
    """DiSparse static: per-task SNIP scores at init, per-task top-r, backbone union; train the fixed mask."""

    revision = 2  # 2: scores a Xavier re-initialised copy by default (scoring_init), as the reference does
    Params = DisparseStaticParams
    starts_from = "init"
    contract_params: ClassVar[dict[str, Any]] = {"batches": 1}

    def task_scores(self, ctx: MethodContext, pools: Mapping[str, Sequence[str]]) -> TaskScores:
        p: DisparseStaticParams = self.params  # type: ignore[assignment]
        reinit = ctx.generator(XAVIER_SALT) if p.scoring_init == "xavier" else None
        ctx.record(scoring_init=p.scoring_init)
        return static_scores(
            ctx.model, ctx.batches(p.batches, p.batch_size), _task_losses(ctx), pools, reinit=reinit
        )


@METHODS.register("disparse-pretrained")
class DisparsePretrained(_Disentangled):
    """DiSparse pretrained: disentangled per-task selection on the dense model (|w| or (Σ|g|)·w²), then FT."""

    revision = 2  # 2: the criterion defaults per dataset (gradient on Taskonomy), as the reference does
    Params = DisparsePretrainedParams
    starts_from = "dense"
    contract_params: ClassVar[dict[str, Any]] = {"batches": 1}

    def task_scores(self, ctx: MethodContext, pools: Mapping[str, Sequence[str]]) -> TaskScores:
        p: DisparsePretrainedParams = self.params  # type: ignore[assignment]
        criterion = resolve_criterion(p.criterion, ctx.spec.data.dataset)
        ctx.record(criterion=criterion)
        if criterion == "magnitude":
            return magnitude_scores(ctx.model, pools)
        return gradient_scores(ctx.model, ctx.batches(p.batches, p.batch_size), _task_losses(ctx), pools)


@METHODS.register("disparse-dynamic")
class DisparseDynamic(PruningMethod):
    """DiSparse dynamic: random ERK mask, periodic magnitude drop and per-task gradient regrowth (union)."""

    Params = DisparseDynamicParams
    starts_from = "init"
    sparsity_tolerance: ClassVar[float] = 0.001
    contract_params: ClassVar[dict[str, Any]] = {"delta_t": 2}  # several updates within the tiny run

    def initial_masks(self, ctx: MethodContext) -> Masks:
        """A random mask with exact ERK (power ``erk_power``) per-layer counts from the seeded generator."""
        p: DisparseDynamicParams = self.params  # type: ignore[assignment]
        shapes = {name: tuple(w.shape) for name, w in ctx.prunable().items()}
        return random_masks(shapes, erk_keep_counts(shapes, ctx.target, p.erk_power), ctx.generator())

    def run(self, ctx: MethodContext) -> None:
        p: DisparseDynamicParams = self.params  # type: ignore[assignment]
        masks = self.initial_masks(ctx)
        ctx.apply_masks(masks)
        ctx.log(**{"disparse.dense_layers": sum(int(m.all()) for m in masks.values())})
        spec = ctx.sparse_training_spec()
        callback = DisparseDynamicCallback(
            ctx.prunable(),
            task_pools(ctx.prunable(), ctx.tasks, ctx.component_of),
            delta_t=p.delta_t,
            prune_rate=p.prune_rate,
            end_step=math.floor(p.end * spec.steps + 1e-9),
        )
        ctx.train(spec, phase="train", callbacks=[callback])
        summary = {
            "disparse.updates": len(callback.updates),
            "disparse.changed_total": sum(u["disparse.changed"] for u in callback.updates),
        }
        ctx.log(**summary)
        ctx.record(**{k.removeprefix("disparse."): v for k, v in summary.items()})
