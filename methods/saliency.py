"""Pruning at initialisation from a saliency score, then sparse training: SNIP, GraSP and SynFlow.

Papers:
- ``snip``: Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  ICLR 2019, arXiv 1810.02340.
- ``grasp``: Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow",
  ICLR 2020, arXiv 2002.07376.
- ``synflow``: Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020, arXiv 2006.05467.

All three start from the dense stage's initialisation (``starts_from = "init"``), score the prunable weights
(conv and linear weights of the backbone and every head) once (SynFlow: iteratively), keep exactly
round((1 − target)·N) of them with ``ctx.select_masks``, zero the rest with ``ctx.apply_masks``, and train
the sparse network on ``ctx.sparse_training_spec()`` (dense + finetune steps on the dense recipe: the
benchmark's fairness rule for at-init methods). The public functions :func:`snip_scores`,
:func:`grasp_scores` and :func:`synflow_scores` are pure: they score a deep copy and never change the model
they are given (weights, BN running statistics and ``num_batches_tracked`` stay bit-identical), so the
sparse training starts from exactly init ⊙ mask.

Multi-task conventions (methods.md B.0): the data-driven scores (SNIP, GraSP) use the weighted multi-task
training loss ``ctx.total_loss(ctx.task_losses(outputs, batch))``, the same weighted sum training optimises.

Deliberate deviations and choices, all of them:

- Scope: ``global`` (one ranking over every prunable weight) is the papers' setting and the default.
  ``layer`` (every tensor at the target), ``component`` (backbone and each head at the target) and ``erk``
  (RigL's Erdős–Rényi-Kernel per-layer densities) fix the layer budget in advance and use the saliency only
  to choose weights *within* a group: they change the method (the layerwise allocation is what these
  criteria mostly decide, Frankle et al., ICLR 2021) and SynFlow's layer-collapse argument no longer
  applies. Under ``erk`` an iterative SynFlow round may re-admit a weight an earlier round pruned when the
  ERK count of its layer drops; the final round's mask is still exact.
- Scoring mode (SNIP, GraSP): the scoring copy is in train mode, so BN normalises with batch statistics as
  in the reference code, but every dropout module is switched off (eval). The ASPP heads have
  Dropout(0.5); with it on, the score would be a random draw from the global RNG, and GraSP's two passes
  (g, then H g) would differentiate two different networks. The copy is discarded afterwards, so the BN
  running statistics the training starts from are the initialisation's (checked by the tests).
- Normalisation: SNIP normalises the sensitivities by their sum and GraSP by |Σ S|; dividing every score by
  one positive constant does not change a ranking, so the scores are returned unnormalised.
- SNIP over several ``batches`` (the official code uses one, the default): the sensitivity of the summed
  loss, |w ⊙ Σ_b g_b| (gradients accumulated as in the Synaptic-Flow SNIP pruner), not Σ_b |w ⊙ g_b|.
- GraSP: S = −θ ⊙ (H g), with g the gradient of the loss from a first pass without ``create_graph``
  (summed over ``batches``) and H g = ∇_θ (gᵀ ∇_θ L) from a second, double-back-propagated pass over the
  same batches, the official two-pass structure; H is the Hessian with respect to the prunable weights
  only (BN and biases fixed), as in the official code. The weights with the HIGHEST S are removed, so
  ``ctx.select_masks`` (which prunes the lowest) receives −S = θ ⊙ (H g) (:func:`grasp_ranking`).
  The temperature T = 200 of the official code divides classification logits; here it divides the
  segmentation logits (``segment_semantic``) only: regression heads (normals, depth, keypoints, edges)
  have no logits and are left as they are. Random training batches replace the official class-balanced
  sample (``samples_per_class``), which has no meaning for dense prediction; each batch is used whole, not
  split into two halves (the official split only saves memory). The official re-initialisation of the final
  linear classifier (Xavier) before scoring is not done: the heads are ASPP convolutions, initialised like
  the rest of the network.
- SynFlow: the scoring copy is in eval mode (BN uses its running statistics, the initialisation's
  mean 0 / variance 1; dropout off) and in float64, and every floating-point parameter and buffer is
  replaced by its absolute value (BN affine, biases and running statistics too, as the reference
  linearises the whole state dict). R is the sum of every head's outputs on one all-ones input of shape
  (1, 3, H, W) with (H, W) = ``data.crop``; ``head_normalization: true`` (an MTL variant, methods.md B.6)
  divides each head's sum by its number of output elements so the 40-channel segmentation head does not
  dominate (observed on the tiny NYU-v2 3-task deeplab_resnet34 at 70%: the plain sum prunes the normal and
  depth heads entirely, with 5 or 100 rounds; the normalised R keeps every head). Scores are
  |θ| ⊙ ∂R/∂|θ| on the prunable weights, with the current mask applied to the linearised copy before each
  round. ``rounds`` (default 100, as the paper) rounds follow the exponential
  density schedule d_k = (1 − target)^(k/n), each pruning to 1 − d_k among the current survivors; the
  last round is set to the target exactly (no floating-point drift). Overflow: R is not rescaled; if it
  is not finite in float64 the method raises a ``FloatingPointError`` that names the value (rescaling
  layers would preserve the ranking only for a bias-free, BN-free network).
- Logging: every selection writes ``<method>.sparsity``, per-component sparsity and the number of
  tensors pruned to zero density (``<method>.collapsed_layers``, layer collapse); SynFlow also logs each
  round (``synflow.round``, ``synflow.R``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlprune.engine.context import MethodContext, scoring_copy
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import Masks, Scope
from mtlprune.methods.base import MethodParams, OneShotMethod
from mtlprune.methods.scoring import weight_grads
from mtlprune.registry import METHODS

LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Any]], Tensor]
# Tasks whose head outputs are classification logits (GraSP's temperature applies to them only).
LOGIT_TASKS: tuple[str, ...] = ("segment_semantic",)

SCOPE_DESCRIPTION = (
    "global (the papers' one ranking), layer, component (backbone and each head) or erk; "
    "non-global scopes fix the layer budget and change the method"
)


# ------------------------------------------------------------------------------------------- helpers


def _weights(net: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """The named parameters of ``net``, in ``names`` order (a deep copy keeps the original's names)."""
    params = dict(net.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"the model has no parameters named {missing[:3]}")
    return [params[n] for n in names]


def _prunable_names(model: nn.Module, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    if not isinstance(model, MTLModel):
        raise TypeError("pass `names` for a model that is not an MTLModel (no prunable_parameters())")
    return list(model.prunable_parameters())


# --------------------------------------------------------------------------------------------- SNIP


def snip_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    loss_fn: LossFn,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """SNIP connection sensitivity |∂L/∂c| = |w ⊙ g| at c = 1, with g the gradient of the summed loss.

    ``loss_fn(outputs, batch)`` is the scalar loss of one batch (the weighted multi-task loss in the
    method). Scored on a copy in train mode with dropout off; ``model`` is not changed. Unnormalised
    (dividing by the sum changes no ranking). ``names``: the weights to score (default: the prunable set).
    """
    names = _prunable_names(model, names)
    net = scoring_copy(model)
    weights = _weights(net, names)
    total = [torch.zeros_like(w) for w in weights]
    seen = 0
    for batch in batches:
        loss = loss_fn(net(batch["input"]), batch)
        for acc, g in zip(total, weight_grads(loss, weights), strict=True):
            acc.add_(g)
        seen += 1
    if seen == 0:
        raise ValueError("snip_scores needs at least one batch")
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, total, strict=True)}


# -------------------------------------------------------------------------------------------- GraSP


def _tempered(outputs: Any, temperature: float, logit_tasks: Sequence[str]) -> Any:
    """Divide the logit heads' outputs by the temperature (GraSP's T); other heads unchanged."""
    if temperature == 1.0 or not isinstance(outputs, Mapping):
        return outputs
    return {t: o / temperature if t in logit_tasks else o for t, o in outputs.items()}


def grasp_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    loss_fn: LossFn,
    temperature: float = 1.0,
    logit_tasks: Sequence[str] = LOGIT_TASKS,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """GraSP scores S = −θ ⊙ (H g) by double back-propagation (the official two-pass structure).

    Pass 1 sums g = ∇L_b over the batches without a graph; pass 2 computes, per batch, z = gᵀ ∇L_b with
    ``create_graph`` and accumulates H g = ∇z. The outputs of ``logit_tasks`` are divided by
    ``temperature`` before ``loss_fn``. High S means "remove" (see :func:`grasp_ranking`). Scored on a copy
    in train mode with dropout off; ``model`` is not changed.
    """
    names = _prunable_names(model, names)
    batches = list(batches)
    if not batches:
        raise ValueError("grasp_scores needs at least one batch")
    net = scoring_copy(model)
    weights = _weights(net, names)

    def loss_of(batch: Mapping[str, Any]) -> Tensor:
        return loss_fn(_tempered(net(batch["input"]), temperature, logit_tasks), batch)

    g = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        for acc, grad in zip(g, weight_grads(loss_of(batch), weights), strict=True):
            acc.add_(grad)
    hg = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        grads = weight_grads(loss_of(batch), weights, create_graph=True)
        z = sum((gi.detach() * fi).sum() for gi, fi in zip(g, grads, strict=True))
        for acc, h in zip(hg, weight_grads(z, weights), strict=True):
            acc.add_(h.detach())
    return {n: -(w.detach() * h) for n, w, h in zip(names, weights, hg, strict=True)}


def grasp_ranking(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """What ``select_masks`` (which prunes the LOWEST) receives so that the HIGHEST GraSP scores go: −S."""
    return {n: -s for n, s in scores.items()}


# ------------------------------------------------------------------------------------------ SynFlow


def synflow_linearise(model: nn.Module) -> nn.Module:
    """A float64 deep copy in eval mode with every floating-point parameter and buffer replaced by |·|."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in (*net.parameters(), *net.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    return net


def synflow_pass(
    net: nn.Module,
    input_shape: Sequence[int],
    names: Sequence[str],
    originals: Mapping[str, Tensor] | None = None,
    masks: Masks | None = None,
    head_normalization: bool = False,
) -> tuple[dict[str, Tensor], float]:
    """One SynFlow scoring pass on a linearised copy: (scores θ ⊙ ∂R/∂θ, R).

    With ``masks``, each named weight is first set to ``originals[name] ⊙ mask`` (masked weights
    contribute zero). R is the sum of every output (of each head divided by its element count with
    ``head_normalization``); a non-finite R raises ``FloatingPointError``.
    """
    weights = _weights(net, names)
    if masks is not None:
        if originals is None:
            raise ValueError("masks need the linearised originals to re-mask from")
        with torch.no_grad():
            for name, w in zip(names, weights, strict=True):
                w.copy_(originals[name] * masks[name].to(device=w.device, dtype=w.dtype))
    param = next(net.parameters())
    x = torch.ones(tuple(input_shape), dtype=torch.float64, device=param.device)
    outputs = net(x)
    parts = outputs.values() if isinstance(outputs, Mapping) else [outputs]
    r = sum(o.sum() / (o.numel() if head_normalization else 1) for o in parts)
    value = float(r.detach())
    if not torch.isfinite(r):
        raise FloatingPointError(
            f"SynFlow: R = {value} is not finite in float64 (the all-ones forward pass of the linearised "
            "network overflowed); the weights are too large for a data-free SynFlow score"
        )
    grads = weight_grads(r, weights)
    scores = {n: (w.detach() * g).detach() for n, w, g in zip(names, weights, grads, strict=True)}
    return scores, value


def synflow_scores(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Masks | None = None,
    head_normalization: bool = False,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """SynFlow scores |θ| ⊙ ∂R/∂|θ| (float64, all ≥ 0) of one round; ``model`` is not changed.

    ``input_shape``: the all-ones input, (1, 3, H, W). ``masks``: the current keep-masks (pruned weights
    score 0 and contribute nothing to R).
    """
    names = _prunable_names(model, names)
    net = synflow_linearise(model)
    originals = {n: w.detach().clone() for n, w in zip(names, _weights(net, names), strict=True)}
    scores, _ = synflow_pass(net, input_shape, names, originals, masks, head_normalization)
    return scores


def synflow_sparsity(round_k: int, rounds: int, target: float) -> float:
    """Sparsity after round k of n on the exponential density schedule d_k = (1 − target)^(k/n)."""
    if not 1 <= round_k <= rounds:
        raise ValueError(f"round {round_k} outside 1..{rounds}")
    if round_k == rounds:
        return float(target)  # exact: 1 − (1 − t) may differ from t in the last bit
    return 1.0 - (1.0 - target) ** (round_k / rounds)


# ------------------------------------------------------------------------------------------ methods


def _log_masks(ctx: MethodContext, prefix: str, masks: Masks, **extra: float) -> None:
    """Sparsity overall and per component of a mask set, and how many tensors were pruned to nothing."""
    pruned: dict[str, int] = {}
    total: dict[str, int] = {}
    collapsed = 0
    for name, mask in masks.items():
        z, n = int((~mask.bool()).sum()), mask.numel()
        collapsed += int(z == n)
        for key in ("overall", ctx.component_of(name)):
            pruned[key] = pruned.get(key, 0) + z
            total[key] = total.get(key, 0) + n
    scalars = {f"{prefix}.sparsity": pruned["overall"] / total["overall"]}
    for key in total:
        if key != "overall":
            scalars[f"{prefix}.sparsity.{key.replace('/', '.')}"] = pruned[key] / total[key]
    ctx.log(**scalars, **{f"{prefix}.collapsed_layers": collapsed}, **extra)


def _training_loss(ctx: MethodContext) -> LossFn:
    """The weighted multi-task loss of the training recipe, as a ``loss_fn(outputs, batch)``."""

    def loss_fn(outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
        return ctx.total_loss(ctx.task_losses(outputs, batch))

    return loss_fn


class SnipParams(MethodParams):
    scope: Scope = Field("global", description=SCOPE_DESCRIPTION)
    batches: int = Field(1, ge=1, le=10_000, description="scoring batches (the official code uses one)")
    batch_size: int | None = Field(None, ge=1, description="scoring batch size; default: train.batch_size")


class GraspParams(SnipParams):
    temperature: float = Field(
        200.0, gt=0.0, description="T dividing the segmentation logits while scoring (official: 200)"
    )


class SynflowParams(MethodParams):
    scope: Scope = Field("global", description=SCOPE_DESCRIPTION)
    rounds: int = Field(100, ge=1, le=100_000, description="pruning rounds of the exponential schedule")
    head_normalization: bool = Field(
        False, description="divide each head's output sum by its element count (MTL variant)"
    )


class _SaliencyAtInit(OneShotMethod):
    """Score once at initialisation, keep the target with ``ctx.select_masks``, train the sparse network."""

    starts_from = "init"
    prefix: ClassVar[str] = "saliency"

    def masks(self, ctx: MethodContext) -> Masks:
        """The keep-masks at the cell's target, logged per component (the model is not changed)."""
        masks = super().masks(ctx)
        _log_masks(ctx, self.prefix, masks)
        return masks


@METHODS.register("snip")
class Snip(_SaliencyAtInit):
    """SNIP: prune at init by connection sensitivity |g ⊙ w| of the MTL loss, then train sparse."""

    Params = SnipParams
    prefix = "snip"

    def scores(self, ctx: MethodContext) -> dict[str, Tensor]:
        p: SnipParams = self.params  # type: ignore[assignment]
        return snip_scores(ctx.model, ctx.batches(p.batches, p.batch_size), _training_loss(ctx))


@METHODS.register("grasp")
class Grasp(_SaliencyAtInit):
    """GraSP: prune at init the weights with the highest −θ ⊙ (H g) (gradient flow), then train sparse."""

    Params = GraspParams
    prefix = "grasp"

    def scores(self, ctx: MethodContext) -> dict[str, Tensor]:
        p: GraspParams = self.params  # type: ignore[assignment]
        scores = grasp_scores(
            ctx.model, ctx.batches(p.batches, p.batch_size), _training_loss(ctx), temperature=p.temperature
        )
        return grasp_ranking(scores)


@METHODS.register("synflow")
class Synflow(OneShotMethod):
    """SynFlow: data-free iterative pruning at init by synaptic flow |θ| ⊙ ∂R/∂|θ|, then train sparse."""

    Params = SynflowParams
    starts_from = "init"
    contract_params: ClassVar[dict[str, Any]] = {"rounds": 5}

    def masks(self, ctx: MethodContext) -> Masks:
        """The keep-masks after ``rounds`` re-scoring rounds (the model is not changed)."""
        p: SynflowParams = self.params  # type: ignore[assignment]
        names = list(ctx.prunable())
        net = synflow_linearise(ctx.model)
        originals = {n: w.detach().clone() for n, w in zip(names, _weights(net, names), strict=True)}
        input_shape = (1, 3, *ctx.spec.data.crop)
        masks: Masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in originals.items()}
        for k in range(1, p.rounds + 1):
            scores, r = synflow_pass(net, input_shape, names, originals, masks, p.head_normalization)
            sparsity = synflow_sparsity(k, p.rounds, ctx.target)
            masks = ctx.select_masks(scores, scope=p.scope, target=sparsity, current=masks)
            ctx.log(**{"synflow.round": k, "synflow.target": sparsity, "synflow.R": r})
        _log_masks(ctx, "synflow", masks)
        return masks
