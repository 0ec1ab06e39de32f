"""AdapMTL: adaptive soft-threshold pruning of a multi-task model, with adaptive task-loss weighting; and its
building block STR.

Papers:
- Xiang, Tang, Yang, Guan & Liu, "AdapMTL: Adaptive Pruning Framework for Multitask Learning Model",
  ACM Multimedia 2024, arXiv 2408.03913 (reference code MitchellX/AdapMTL, read at 29ce7ba; what the
  benchmark follows is in docs/methods.md and docs/protocols.md).
- Kusupati, Ramanujan, Somani, Wortsman, Jain, Kakade & Farhadi, "Soft Threshold Weight Reparameterization
  for Learnable Sparsity" (STR), ICML 2020, arXiv 2002.03231.

The method. Every prunable weight (every conv and linear weight; BN and biases never) is used in the forward
pass as Ŵ = sign(W)·ReLU(|W| − g(s)) with g = sigmoid (soft thresholding, registered with
``torch.nn.utils.parametrize``): weights at or below the threshold are exactly zero, the rest are shrunk by
it. The logit s is a learnable scalar shared by all weights of a group: one per component (the backbone and
each task head; ``thresholds: component``, AdapMTL), one for the whole network (``network``: the paper's
"w/o adaptive thresholds" row) or one per layer (``layer``: STR). W and every s train jointly in the cell's
recipe optimizer (by default the reference's Adam, β = (0.5, 0.999), with coupled L2 weight decay that also
decays the thresholds). Gradients: dŴ/dW = 1[|W| > g(s)] and dL/ds = −g′(s)·Σ dL/dŴ·sign(W)·1[|W| > g(s)].
With ``adaptive_weighting`` the task losses are weighted as the reference does (§1.6 of the notes, exactly):
from step t_w = round(weighting_start·T), each task's relative one-step loss change d_t(i) =
|L_t(i−1) − L_t(i)| / L_t(i) goes into a FIFO; once it holds more than n = max(1, round(window·T)) entries
the oldest is dropped and m_t = mean of the last n; m_t = 1 before that; every step
w_t = K·m_t / Σ_k m_k and the loss is Σ_t p_t·w_t·L_t (p_t = the recipe's ``task_weights``, default 1; no
gradient through w_t). The reference's 5000 and 500 of 20000 steps are the defaults 0.25 and 0.025.
K: the reference hard-codes 3 whatever the number of tasks T (Taskonomy's five weights then start at 0.6,
which also rescales the task gradients against weight decay). ``control: faithful`` keeps 3; the default
``control: target`` uses K = T, so the weights average 1 and the balance between the task losses and the
weight decay is that of the unweighted recipe for any T (``K`` overrides either).

Reaching the target. ``control: faithful`` is the reference rule: thresholds start at ``s_init`` and are
frozen (no update, no decay: their gradient is dropped) on every step whose forward pass was at or above the
target sparsity (main/trainer.py:175-192); sparsity is steered only by ``s_init`` and ``weight_decay`` and can
miss the target by far; the cell then reports what it achieved (such an instance accepts any sparsity; the
report lists every cell whose mean achieved sparsity misses its target by more than 0.1 pp). The reference
reaches a target by a weight-decay search: it sweeps ``--weight_decay`` (args.py:14) at a fixed
``--sInit_value`` and ``--ratio`` (args.py:13, :15), one full training run per value, and keeps by hand the
run that lands at the ratio; no script chooses. Its grids: ResNet34 on NYU-v2 (s_init −15) 5e-8, 1e-7, 5e-7,
1e-6, 5e-6, 1e-5, 5e-5, 7.5e-5, 1e-4, 2.5e-4, 5e-4, 7.5e-4 (the run folders listed in
Scripts/get_score_from_training_logs.ipynb:192-203, overall sparsities 12 … 99 % at :248); MobileNetV2 (s_init
−18) 1e-6, 3e-6, 5e-6, 7.5e-6, 1e-5, 3e-5, 5e-5, 7.5e-5
(logs/DispMTL_results/mobilenetv2_baseline_2023-03-30.txt:1-113, 87.2 … 97.1 %); for ratio 0.9 the ResNet34
runs it reports are wd 6e-5 → 91.72 % and 5e-5 → 93.38 %
(logs/DispMTL_results/resnet34_accuracy_saprsity_2023-03-30.txt:273-279, :369). ``wd_search`` (a strictly
ascending list of weight decays; faithful only, instead of ``weight_decay``) runs that search inside the cell:
one full run of the cell's budget per weight decay, in order, each from the same start (weights, BN
statistics, thresholds at ``s_init``, a fresh optimizer and fresh task weights), stopping at the first run
whose final sparsity reaches the target (≥ the ratio, the freeze rule's own test); that run is the cell's
model, or the last one when none reaches it. The rule is ours (the reference chose by eye); ascending order
with the freeze makes it pick the smallest weight decay that gets there. Every run counts in ``steps_method``
/ ``steps_total`` (``planned_steps`` is the whole grid's, an upper bound); each run's weight decay and final
sparsity are logged (``adapmtl.search.weight_decay``, ``adapmtl.search.sparsity``) and kept in
``method_state.wd_search``, the kept run's in ``method_state.weight_decay``. No default grid: the reference's
were tuned for its own 20k-step, lr-1e-3 runs, and the search costs up to one budget per value.

``control: target`` (the default) is the benchmark's controller: the learned logits s_g keep the split between
groups, and one global, non-learned logit offset b is added to all of them, so the thresholds are g(s_g + b).
b is solved, not learned: a weight w of group g is pruned iff logit(|w|) − s_g ≤ b, so the sparsity is a step
function of b and the offset that prunes exactly k weights is the k-th smallest key logit(|w|) − s_g (one
selection over all weights; b is placed midway between the k-th and (k+1)-th keys). After the optimizer update
of step t the controller sets b so that the sparsity of the next forward pass is the GMP cubic schedule s(t+1)
= s_f·(1 − (1 − (t+1 − t0)/(t_end − t0))³), 0 before t0 = round(ramp_start·T), the target from t_end =
min(round(ramp_end·T), T − 1) on; it acts every ``control_every`` steps from t0 (default max(1, T // 500)), at
t_end, and after the last step, where it solves exactly (float64 keys of every weight, so the final sparsity
counted from the weights is the target up to ties and the float32 rounding of s_g + b and of τ: a few
weights). Intermediate solves rank a strided subsample of at most 2^16 keys when the model has more weights (≈
±0.2 pp of the schedule; nothing depends on it but the log). Between two solves the thresholds keep learning,
so the sparsity drifts a little until the next solve. The thresholds still receive their loss and weight-decay
gradients through g(s_g + b) (b is a constant to autograd), so which component is pruned harder stays learned;
only the overall level is controlled.

Start. ``start: dense`` (default) loads the shared dense checkpoint, sets every threshold to ``s_init`` (as
the reference's ``load_dense_model`` does) and trains on the cell's finetune budget with a fresh optimizer;
``start: init`` trains from the shared initialisation on ``ctx.sparse_training_spec()`` (dense + finetune
steps on the dense recipe). The weights are initialised as the reference does (Deeplab-ResNet34 convs N(0,
0.01), MobileNetV2 He-normal, heads PyTorch's default): that is the benchmark's architecture init.
``s_init`` defaults to −15 (the reference's ResNet34 runs); its MobileNetV2 runs used −18. Under
``control: target`` s_init hardly matters (b absorbs the level); under ``faithful`` it and ``weight_decay``
set the sparsity.

Export. After training the parametrizations are removed with ``leave_parametrized=True``: the model keeps
the thresholded Ŵ (pruned weights exactly zero, survivors shrunk, as the reference deploys them) and the
threshold parameters leave the model (the state dict has the normal keys); masks = (Ŵ ≠ 0) are recorded
with ``ctx.apply_masks``, and the evaluated model is the thresholded one.

Logged every step (log.jsonl and TensorBoard): ``adapmtl.threshold.<group>`` (g(s_g + b) of the step's
forward pass; groups ``backbone``, ``head.<task>`` / ``network`` / the layer names), ``adapmtl.sparsity``
and ``adapmtl.sparsity.<component>`` (exact zeros of that forward pass's Ŵ, as the reference's
``store_sparsity``; counted in the backward pass from the signs the threshold gradient needs anyway),
``adapmtl.weight.<task>`` (the loss weight p_t·w_t), with ``control: target``
``adapmtl.offset`` (b) and ``adapmtl.scheduled`` (the schedule's sparsity at the last solve), with
``faithful`` ``adapmtl.frozen``; the trainer logs ``loss.<task>``. result.json ``method_state`` holds the
final per-component sparsity, thresholds, logits, offset and task weights.

Registered: ``adapmtl`` (component thresholds + adaptive weighting), ``adapmtl-single-threshold`` (one
threshold for the network: the paper's "w/o adaptive thresholds"), ``adapmtl-fixed-weights`` (no adaptive
weighting) and ``str`` (one threshold per layer, no task weighting): the same code with other defaults.

Deliberate deviations from the reference code / papers:

- ``control: target`` (the default) is ours (above); the reference reaches a ratio only through a per-target
  (s_init, weight decay) search plus the freeze rule, kept as ``control: faithful`` (``wd_search``: the
  search, with our stopping rule in place of the authors' choice by eye).
- K = T instead of the hard-coded 3 under ``control: target`` (above); ``faithful`` keeps 3.
- Budget: from the dense checkpoint the method trains on the cell's finetune budget and recipe (the reference
  restarts a full 20k-step run with lr 1e-3); from init, dense + finetune steps (the benchmark's fairness
  rule). The optimizer is the recipe's (by default exactly the reference's Adam with coupled decay) with
  ``weight_decay`` (default the recipe's) applied to every parameter, thresholds included; a recipe with SGD
  is used as given (STR's setting). STR's separate threshold decay (``st_decay``) is not offered.
- Faithful freeze: the reference freezes and counts only the backbone and the segment/normal/depth heads (a
  bug on Taskonomy); here every threshold is frozen and every component counted. The
  reference's ratio is the cell's target.
- The final model is the last step's (``eval.selection: last``, the benchmark default; the reference picks
  its checkpoint on the test split). With ``best_val`` the controller solves b once more on the selected
  step's weights for the target, so the target is still met (logged as ``adapmtl.final_solve``).
- Weighting guards the reference does not have: d_t = 0 when L_t(i) = 0, and w_t = K/T when Σ_k m_k = 0.
- A weight with |w| ≥ 1 cannot be pruned by a sigmoid threshold (as in the reference); the controller then
  saturates (the offset is clamped to ±10⁴ in logit space) and the target can be missed (then the cell fails
  loudly). Tied magnitudes are pruned together.
- Threshold precision: τ = ``torch.sigmoid`` of the float32 logit, as the reference (on the CPU each
  threshold as a 0-dim tensor, :func:`reference_sigmoid`); with the controller's offset, s + b is summed in
  float64 and rounded once to float32 first (b = 0 under ``faithful``: exactly the reference's τ).
- Implementation: the soft threshold of all layers is one fused autograd function per forward pass (one
  ``softshrink`` per tensor), computed on the first weight access of a model forward. On the CPU its backward
  goes through each tensor larger than ``SLICE`` (2^20) elements in slices that stay in cache: sign(Ŵ) from
  the weight slice, the masked weight gradient, and the two dots (⟨dL/dŴ, sign(Ŵ)⟩ for the threshold,
  ⟨sign(Ŵ), sign(Ŵ)⟩ for the count of non-zeros), so a tensor is read and written once; smaller tensors (and
  every tensor on a GPU, up to 2^24 − 1 elements) take the same four operations on the whole tensor, the dots
  written into a table kept from pass to pass. On a GPU nothing in a step waits for the device: the forward
  takes τ as a device tensor (Ŵ = W − clamp(W, −τ, τ), softshrink's values; a Python float τ would make every
  forward wait for the previous optimizer step), and the counts and thresholds go to the host by a
  non-blocking copy that the callback reads after the optimizer step is queued (the faithful freeze alone
  reads the counts before it). The threshold gradient is the sum of the per-slice float32 dots in float64 (a
  deliberate difference from the reference's autograd sum, within float32 rounding of it; revision 3; revision
  4: slices of 2^20 elements instead of 2^18). In a training pass Ŵ is written into buffers kept from step to
  step and dL/dW over the incoming dL/dŴ, as fresh tensors of tens of MB cost more in page faults than the
  passes that fill them (docs/accounting.md, "A training step at full width"). With the reference's τ its Ŵ is
  the reference's sign(W)·ReLU(|W| − τ) bit for bit (same mask, same shrunk survivors, same weight gradients)
  except the sign of a pruned weight's zero (softshrink may write +0 where sign(W)·0 is −0; equal as numbers,
  and no sum or product with a non-zero changes). The training step costs about 1.10× (Deeplab-ResNet34) and
  1.12× (MobileNetV2) the dense step at CPU width, the controller's solve amortised
  (tests/perf/test_perf_adapmtl.py; target ≤ 1.15×); at full width see docs/accounting.md
  (tests/perf/test_perf_full_width.py). Under ``faithful`` b is 0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mtlprune.engine.context import MethodContext
from mtlprune.engine.train import StepRunner, TrainCallback
from mtlprune.methods.base import MethodParams, PruningMethod
from mtlprune.methods.gmp import gmp_sparsity, gmp_steps
from mtlprune.registry import METHODS
from mtlprune.spec import RunSpec, TrainSpec

OFFSET_LIMIT = 1.0e4  # |b| bound in logit space: sigmoid(±1e4) is exactly 0 / 1 in float32 and float64
SAMPLE_CAP = 1 << 16  # keys ranked by an intermediate (non-final) controller solve

# ------------------------------------------------------------------------------ the soft threshold


SLICE = 1 << 20  # elements per slice of the backward's loop: its slices of Ŵ, dL/dŴ, sign(Ŵ) stay in cache
DEVICE_SLICE = (1 << 24) - 1  # on a GPU: whole tensors up to this size (every count exact in float32)


class _Plan:
    """What the fused function needs besides tensors: the threshold group of each weight tensor, the index
    tensor for summing per-tensor gradients into the groups, and a slot for the counts of the last pass."""

    def __init__(
        self,
        groups: Sequence[int],
        n_thresholds: int,
        device: torch.device | None = None,
        reuse_outputs: bool = False,
    ) -> None:
        self.groups = tuple(groups)
        self.n_thresholds = n_thresholds
        self.index = torch.tensor(self.groups, dtype=torch.long, device=device)
        self.nonzero: Tensor | None = None  # per tensor: non-zeros of the last Ŵ that was back-propagated
        self.nonzero_host: HostCopy | None = None  # the same, on its way to the host (read without a drain)
        # Buffers kept from pass to pass: a fresh tensor of tens of MB costs more in first-touch page faults
        # than the elementwise pass that fills it. ``outputs`` (Ŵ per tensor, only with ``reuse_outputs``:
        # the bank's training forward, one live graph at a time; a pass that overwrites a Ŵ an unfinished
        # graph saved fails that graph's backward through autograd's version check) and ``scratch`` (sign(Ŵ)
        # of one slice at a time in the backward, never escaping it).
        self.reuse_outputs = reuse_outputs
        self.grad_pass = False  # set by the caller: autograd runs a Function's forward with grad mode off
        self.outputs: list[Tensor | None] = [None] * len(self.groups)
        self.scratch: Tensor | None = None
        self.dots: Tensor | None = None  # per slice: ⟨dL/dŴ, sign(Ŵ)⟩ and the non-zeros of Ŵ

    def output(self, i: int, weight: Tensor) -> Tensor | None:
        """The kept Ŵ buffer of tensor ``i`` matching ``weight`` (shape, strides, dtype, device), or None."""
        if not (self.reuse_outputs and self.grad_pass):  # evaluation passes allocate afresh
            return None
        buf = self.outputs[i]
        if (
            buf is None
            or buf.shape != weight.shape
            or buf.stride() != weight.stride()
            or buf.dtype != weight.dtype
            or buf.device != weight.device
        ):
            buf = self.outputs[i] = torch.empty_like(weight)
        return buf

    def dot_table(self, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The (rows, 2) table the backward writes each slice's two dots into, kept from pass to pass: on a
        GPU under deterministic algorithms every fresh tensor costs a fill kernel besides its own."""
        table = self.dots
        if table is None or table.shape[0] != rows or table.dtype != dtype or table.device != device:
            table = self.dots = torch.empty(rows, 2, dtype=dtype, device=device)
        return table

    def slice_buffer(self, like: Tensor, size: int) -> Tensor:
        """The scratch buffer for sign(Ŵ) of one slice (``size`` elements of ``like``'s dtype and device)."""
        if (
            self.scratch is None
            or self.scratch.numel() < size
            or self.scratch.dtype != like.dtype
            or self.scratch.device != like.device
        ):
            self.scratch = torch.empty(size, dtype=like.dtype, device=like.device)
        return self.scratch


class HostCopy:
    """A small device tensor's values on their way to the host: copied without blocking when made, and
    waited for when read, up to that copy only (not the work queued after it, such as the optimizer step).

    On a GPU a blocking read drains the queue: the device idles while the host launches what follows. On
    the CPU the copy is the tensor itself.
    """

    def __init__(self, tensor: Tensor) -> None:
        tensor = tensor.detach()
        self.event: Any = None
        if tensor.device.type == "cuda":
            self.values = tensor.to("cpu", non_blocking=True)  # into pinned memory
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.values = tensor.cpu()

    def tolist(self) -> list[Any]:
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()


class _SoftThreshold(torch.autograd.Function):
    """Ŵ_i = softshrink(W_i, τ_g(i)) for many tensors at once; gradients for every W_i and every logit s_g.

    ``taus`` are the thresholds g(s_g + b), computed once per pass by the caller: on the CPU as Python
    floats (one scalar per tensor for the kernel), on a GPU as a device tensor, so that no pass waits for
    the device (Ŵ = W − clamp(W, −τ, τ) there: the same values, two kernels instead of one). dL/ds_g =
    −τ_g(1 − τ_g)·Σ_{i in g} ⟨dL/dŴ_i, sign(Ŵ_i)⟩, sign(Ŵ) = sign(W)·1[|W| > τ]. The backward also stores
    the per-tensor non-zero counts of Ŵ in the plan (⟨sign(Ŵ), sign(Ŵ)⟩, from the signs it needs anyway).
    """

    @staticmethod
    def forward(
        ctx: Any, plan: _Plan, taus: tuple[float, ...] | Tensor, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        n = len(plan.groups)
        weights = tensors[:n]
        if isinstance(taus, Tensor):
            bounds = (taus.neg(), taus)
            outs = tuple(
                _shrink_by_clamp(w, bounds[0][g], bounds[1][g], plan.output(i, w))
                for i, (w, g) in enumerate(zip(weights, plan.groups, strict=True))
            )
        else:
            outs = tuple(
                _softshrink(w, taus[g], plan.output(i, w))
                for i, (w, g) in enumerate(zip(weights, plan.groups, strict=True))
            )
        ctx.save_for_backward(*outs)  # the backward needs Ŵ alone (sign(Ŵ), and 1[Ŵ ≠ 0] = 1[|W| > τ])
        ctx.plan, ctx.taus = plan, taus
        ctx.logit_dtypes = [s.dtype for s in tensors[n:]]
        return outs

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        plan, taus = ctx.plan, ctx.taus
        n = len(plan.groups)
        saved = ctx.saved_tensors
        need_w = ctx.needs_input_grad[2 : 2 + n]
        grad_w: list[Tensor | None] = []
        # On the CPU slices that stay in cache; on a GPU the whole tensor (one launch per operation)
        sizes = [SLICE if o.device.type == "cpu" else min(DEVICE_SLICE, max(1, o.numel())) for o in saved]
        counts = [max(1, -(-o.numel() // size)) for o, size in zip(saved, sizes, strict=True)]
        dtypes = {o.dtype for o in saved}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
        table = plan.dot_table(sum(counts), dtype, saved[0].device)
        start = 0
        for i, g in enumerate(grads):
            out, size, rows = saved[i], sizes[i], table[start : start + counts[i]]
            start += counts[i]
            target = None
            if need_w[i]:
                # dL/dW written over dL/dŴ where that is a tensor of its own (a fresh tensor of tens of MB
                # costs more in page faults than the pass); ⟨dL/dW, sign(Ŵ)⟩ = ⟨dL/dŴ, sign(Ŵ)⟩ term by term
                # (both 0 where Ŵ = 0).
                owned = plan.reuse_outputs and _owned_like(g, out)
                target = g if owned else torch.empty_like(out)
            scratch = plan.slice_buffer(out, size)
            if out.numel() <= size and out.is_contiguous() and g.is_contiguous():
                _backward_whole(g, out, target, scratch, rows[0])  # one slice: fewer calls
            else:
                _backward_slices(g, out, target, scratch[:size], rows)
            grad_w.append(target)
        # per-slice sums in the weights' dtype (counts exact: every slice is below 2^24), summed in float64
        if len(table) == n:  # one slice per tensor (every tensor on a GPU): the table is per tensor
            per_tensor = table.double()
        else:
            owners = [i for i, k in enumerate(counts) for _ in range(k)]
            per_tensor = torch.zeros(n, 2, dtype=torch.float64, device=table.device)
            per_tensor.index_add_(0, torch.tensor(owners, device=table.device), table.double())
        plan.nonzero = per_tensor[:, 1]
        plan.nonzero_host = HostCopy(plan.nonzero)
        grad_s: list[Tensor | None] = [None] * plan.n_thresholds
        if any(ctx.needs_input_grad[2 + n :]):
            per_group = torch.zeros(plan.n_thresholds, dtype=torch.float64, device=table.device)
            per_group.index_add_(0, plan.index, per_tensor[:, 0])
            if isinstance(taus, Tensor):  # −τ(1 − τ) in float64 of the float32 τ, as in Python below
                t = taus.double()
                slope = t.neg() * (1.0 - t)
            else:
                slope = torch.tensor([-t * (1.0 - t) for t in taus], dtype=torch.float64, device=table.device)
            grad_s = [v.to(dtype) for v, dtype in zip(per_group * slope, ctx.logit_dtypes, strict=True)]
        return (None, None, *grad_w, *grad_s)


def _backward_whole(grad: Tensor, out: Tensor, target: Tensor | None, scratch: Tensor, row: Tensor) -> None:
    """One contiguous tensor that fits one slice: dL/dW into ``target``, sign(Ŵ), two dots into ``row``."""
    sign = scratch[: out.numel()]
    torch.sign(out, out=sign.view(out.shape))
    _dots(grad.reshape(-1), sign, row)
    if target is not None:
        _mask_by_output(grad, out, target)


def _backward_slices(grad: Tensor, out: Tensor, target: Tensor | None, scratch: Tensor, rows: Tensor) -> None:
    """One tensor's backward, slice by slice in memory order: dL/dW = dL/dŴ·1[Ŵ ≠ 0] into ``target`` (when
    given; it may be ``grad`` itself), and ⟨dL/dŴ, sign(Ŵ)⟩, ⟨sign(Ŵ), sign(Ŵ)⟩ of slice j into ``rows[j]``
    (one row per slice of ``scratch``'s size, at least one).

    sign(Ŵ) goes into a scratch slice that stays in cache with the slices of Ŵ and dL/dŴ, so each tensor is
    read and written once (Ŵ and dL/dŴ in, dL/dW out) instead of once per operation. Each slice's count is
    exact in float32 (slices are below 2^24 elements); the caller sums the slices in float64.
    """
    if _memory_order(out) is None:  # overlapping or gapped (never a model's parameter): made dense
        out = out.contiguous()
    if grad.stride() != out.stride() or _memory_order(grad) is None:
        grad = torch.empty_like(out).copy_(grad)  # laid out as Ŵ (empty_like keeps dense strides)
    if target is not None and target.stride() != out.stride():
        raise AssertionError("the weight gradient must be laid out as the weight")
    flat_o, flat_g = _memory_order(out), _memory_order(grad)
    flat_t = None if target is None else _memory_order(target)
    assert flat_o is not None and flat_g is not None
    size = scratch.numel()
    if flat_o.numel() == 0:  # an empty tensor
        rows.zero_()
    for j, start in enumerate(range(0, flat_o.numel(), size)):
        o, g = flat_o[start : start + size], flat_g[start : start + size]
        sign = scratch[: o.numel()]
        torch.sign(o, out=sign)
        _dots(g, sign, rows[j])
        if flat_t is not None:
            _mask_by_output(g, o, flat_t[start : start + size])


def _mask_by_output(grad: Tensor, out: Tensor, target: Tensor) -> None:
    """dL/dW = dL/dŴ·1[Ŵ ≠ 0] into ``target``: softshrink's own backward kernel at threshold 0 applied to Ŵ.

    Equal to softshrink_backward(dL/dŴ, W, τ) = dL/dŴ·1[|W| > τ] element for element: |W| > τ ⇔ Ŵ ≠ 0,
    since W − τ of floats W > τ is never 0 (gradual underflow), and a NaN W gives a NaN Ŵ, which the kernel
    treats as it treats the NaN W.
    """
    torch.ops.aten.softshrink_backward.grad_input(grad, out, 0.0, grad_input=target)


def _dots(grad: Tensor, sign: Tensor, row: Tensor) -> None:
    """⟨dL/dŴ, sign(Ŵ)⟩ and the count ⟨sign(Ŵ), sign(Ŵ)⟩ of one flat slice (below 2^24 elements: the count
    is exact in float32) into ``row``, in the slice's dtype (copied when the table's differs)."""
    if row.dtype == sign.dtype:
        torch.dot(grad, sign, out=row[0])
        torch.dot(sign, sign, out=row[1])
    else:  # weights of mixed dtypes: a float64 table
        row[0].copy_(torch.dot(grad, sign))
        row[1].copy_(torch.dot(sign, sign))


def _memory_order(tensor: Tensor) -> Tensor | None:
    """A 1-D view of ``tensor``'s elements in the order they lie in memory (a contiguous or channels-last
    tensor, any dense layout), or None when it has none (overlapping or gapped strides)."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    permuted = tensor.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else None


def _owned_like(grad: Tensor, weight: Tensor) -> bool:
    """Whether the incoming gradient may be overwritten by dL/dW: a tensor of its own (not a view, sole
    user of its storage) laid out as the weight. In the bank's models every Ŵ is consumed by a convolution
    or linear layer only, whose backward returns a fresh gradient (an op that passes one gradient tensor
    to two inputs, as ``Ŵ + x`` would, never sees Ŵ there)."""
    return (
        grad._base is None
        and grad.dtype == weight.dtype
        and grad.shape == weight.shape
        and grad.stride() == weight.stride()
        and grad.is_contiguous()
        and _storage_users(grad) == _SOLE_USER
    )


def _storage_users(tensor: Tensor) -> int:
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


_SOLE_USER = _storage_users(torch.empty(1))  # a tensor alone with its storage (the query holds one more)


def _softshrink(weight: Tensor, tau: float, out: Tensor | None) -> Tensor:
    """``F.softshrink(weight, tau)``, written into ``out`` when one is given (the same kernel and values)."""
    if out is None:
        return F.softshrink(weight, tau)
    return torch.ops.aten.softshrink.out(weight, tau, out=out)


def _shrink_by_clamp(weight: Tensor, low: Tensor, high: Tensor, out: Tensor | None) -> Tensor:
    """W − clamp(W, −τ, τ) for a 0-dim device τ (``low`` = −τ, ``high`` = τ), into ``out`` when given.

    Softshrink's values exactly: W − τ above τ and W − (−τ) = W + τ below −τ (the same float operation),
    W − W = +0 in between; ±inf and NaN pass as softshrink passes them.
    """
    clamped = torch.clamp(weight, low, high, out=out) if out is not None else torch.clamp(weight, low, high)
    return torch.sub(weight, clamped, out=clamped)


def reference_sigmoid(logits: Tensor) -> Tensor:
    """``torch.sigmoid`` of each element of a 1-D tensor, each as the reference evaluates its 0-dim threshold.

    The reference calls ``torch.sigmoid`` on the float32 0-dim threshold Parameter in every layer's forward
    (``sparseFunction``, models/Deeplab_ResNet34.py:13-14, STRConv.forward :35-48). On CUDA one elementwise
    kernel computes every element alike, so a vector gives the 0-dim values. The CPU kernel's vectorised
    body and its scalar tail can round differently (by 1 ulp), and a 0-dim tensor takes the scalar path, so
    on the CPU each element is evaluated as its own 0-dim tensor (a handful of thresholds per pass).
    """
    if logits.device.type != "cpu" or logits.numel() == 0:
        return torch.sigmoid(logits)
    return torch.stack([torch.sigmoid(x) for x in logits.unbind()])


def _floats_on(device: torch.device) -> bool:
    """Whether the fused pass takes its thresholds as Python floats on ``device`` (the CPU, where reading
    them costs nothing and the reference's 0-dim sigmoid is needed) or as a device tensor (a GPU)."""
    return device.type == "cpu"


def _logits_plus(logits: Tensor, offset: float) -> Tensor:
    """s + b in the logits' dtype: summed in float64 and rounded once (exactly s when b = 0)."""
    return logits if offset == 0 else (logits.double() + offset).to(logits.dtype)


def threshold_of(logit: Tensor | float, offset: float = 0.0) -> float:
    """τ = sigmoid(s + b) as the reference computes it, as a Python float (the value the soft threshold uses).

    ``torch.sigmoid`` in the logit's dtype (float32 for a Python float) on its device, of s + b summed in
    float64 and rounded once to that dtype: with b = 0 (``control: faithful``, which has no offset) exactly
    the reference's ``torch.sigmoid(s)`` on its float32 threshold, so the thresholded weights are its own.
    """
    if isinstance(logit, Tensor):
        s = logit.detach().reshape(1)
    else:
        s = torch.tensor([float(logit)], dtype=torch.float32)
    return float(reference_sigmoid(_logits_plus(s, offset))[0])


def soft_threshold(weight: Tensor, logit: Tensor, offset: float = 0.0) -> Tensor:
    """sign(W)·ReLU(|W| − sigmoid(s + b)) for one tensor, differentiable in W and in the 0-dim logit s."""
    plan = _Plan([0], 1, weight.device)
    (out,) = _SoftThreshold.apply(plan, (threshold_of(logit.detach(), offset),), weight, logit)
    return out


class SoftThreshold(nn.Module):
    """The parametrization of one weight: Ŵ = soft threshold of W at its group's threshold.

    Holds the shared threshold Parameter of its group (registered, so ``model.parameters()`` lists each
    shared threshold once, deduplicated) and a plain reference to the bank that computes every layer's Ŵ
    in one fused pass during a model forward.
    """

    def __init__(self, bank: ThresholdBank, index: int) -> None:
        super().__init__()
        self.threshold = bank.logits[bank.plan.groups[index]]
        object.__setattr__(self, "_bank", bank)  # not a submodule: the bank stays outside the model
        self.index = index

    def forward(self, weight: Tensor) -> Tensor:
        return self._bank.thresholded(self.index, weight)


class ThresholdBank:
    """The thresholds of one model: learnable logits s_g, the controller's offset b, the parametrizations.

    ``install`` registers a :class:`SoftThreshold` on every prunable weight and forward hooks on the model
    that make the first weight access of a forward pass compute all Ŵ in one fused call; ``remove`` bakes
    Ŵ into the weights and takes everything out again.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Parameter],
        group_of: Callable[[str], str],
        component_of: Callable[[str], str],
        s_init: float,
    ) -> None:
        self.model = model
        self.names = list(weights)
        self.group_names: list[str] = []
        groups: list[int] = []
        for name in self.names:
            group = group_of(name)
            if group not in self.group_names:
                self.group_names.append(group)
            groups.append(self.group_names.index(group))
        first = next(iter(weights.values()))
        self.logits = [
            nn.Parameter(torch.tensor(float(s_init), dtype=first.dtype, device=first.device))
            for _ in self.group_names
        ]
        self.plan = _Plan(groups, len(self.group_names), first.device, reuse_outputs=True)
        self.components = [component_of(n) for n in self.names]
        self.by_component: dict[str, list[int]] = {}
        for i, component in enumerate(self.components):
            self.by_component.setdefault(component, []).append(i)
        self.numel = [weights[n].numel() for n in self.names]
        self.offset = 0.0
        self.modules: list[nn.Module] = []
        self._order: list[list[str]] = []  # each module's parameter order, restored on removal
        self.originals: list[Tensor] = []
        self._cache: tuple[Tensor, ...] | None = None
        self._in_forward = False
        self._hooks: list[Any] = []
        self._last_taus: tuple[float, ...] | HostCopy = self.taus()

    # ---------------------------------------------------------------------------------- thresholds

    def taus(self) -> tuple[float, ...]:
        """g(s_g + b) per group as :func:`threshold_of` computes it (one device sync for all groups)."""
        return tuple(self.device_taus().cpu().tolist())

    def device_taus(self) -> Tensor:
        """g(s_g + b) per group, on the logits' device, without waiting for it."""
        logits = _logits_plus(torch.stack([s.detach() for s in self.logits]), self.offset)
        return reference_sigmoid(logits)

    @property
    def last_taus(self) -> tuple[float, ...]:
        """The thresholds of the last fused pass (as floats; on a GPU read when asked, not when made)."""
        if isinstance(self._last_taus, HostCopy):
            self._last_taus = tuple(self._last_taus.tolist())
        return self._last_taus

    def thresholds(self) -> dict[str, float]:
        return dict(zip(self.group_names, self.taus(), strict=True))

    # ------------------------------------------------------------------------------- parametrizing

    def install(self) -> None:
        for i, name in enumerate(self.names):
            module = self.model.get_submodule(name.rsplit(".", 1)[0])
            self._order.append(list(module._parameters))
            parametrize.register_parametrization(module, "weight", SoftThreshold(self, i), unsafe=True)
            self.modules.append(module)
            self.originals.append(module.parametrizations.weight.original)
        self._hooks = [
            self.model.register_forward_pre_hook(self._begin),
            self.model.register_forward_hook(self._end, always_call=True),  # also after an exception
        ]

    def remove(self) -> None:
        """Bake Ŵ into the weights (exact zeros, shrunk survivors) and remove thresholds and hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for module, order in zip(self.modules, self._order, strict=True):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            for key in order:  # the weight comes back last: restore the state dict's key order
                module._parameters[key] = module._parameters.pop(key)
        self.modules, self.originals, self._order = [], [], []

    def _begin(self, module: nn.Module, args: Any) -> None:
        self._cache, self._in_forward = None, True

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._cache, self._in_forward = None, False

    def thresholded(self, index: int, weight: Tensor) -> Tensor:
        """Ŵ of weight ``index``: from the fused pass inside a model forward, computed alone outside one."""
        if not self._in_forward:
            taus = self.taus()
            group = self.plan.groups[index]
            plan = _Plan([0], 1, weight.device)
            (out,) = _SoftThreshold.apply(plan, (taus[group],), weight, self.logits[group])
            return out
        if self._cache is None:
            taus: tuple[float, ...] | Tensor
            if _floats_on(weight.device):
                taus = self._last_taus = self.taus()
            else:  # the device's τ: the pass starts without waiting for the last optimizer step to finish
                taus = self.device_taus()
                self._last_taus = HostCopy(taus)
            self.plan.grad_pass = torch.is_grad_enabled()
            self._cache = _SoftThreshold.apply(self.plan, taus, *self.originals, *self.logits)
        return self._cache[index]

    # ------------------------------------------------------------------------------------ counting

    def last_zeros(self) -> list[int] | None:
        """Exact zeros per tensor of the Ŵ of the last back-propagated pass (None before any backward)."""
        if self.plan.nonzero_host is None:
            return None
        return [n - round(z) for n, z in zip(self.numel, self.plan.nonzero_host.tolist(), strict=True)]

    @torch.no_grad()
    def zeros_now(self) -> list[int]:
        """Exact zeros per tensor of Ŵ for the current W, s and b (what the next forward pass uses)."""
        taus = self.taus()
        out = []
        for w, g in zip(self._weights(), self.plan.groups, strict=True):
            out.append(int((F.softshrink(w.detach(), taus[g]) == 0).sum()))
        return out

    def _weights(self) -> list[Tensor]:
        if self.originals:
            return self.originals
        return [self.model.get_submodule(n.rsplit(".", 1)[0]).weight for n in self.names]

    def summary(self, zeros: Sequence[int]) -> dict[str, float]:
        """Overall and per-component sparsity from per-tensor zero counts."""
        total = sum(self.numel)
        out = {"overall": sum(zeros) / total}
        for component, idx in self.by_component.items():
            out[component] = sum(zeros[i] for i in idx) / sum(self.numel[i] for i in idx)
        return out

    # ---------------------------------------------------------------------------------- controller

    @torch.no_grad()
    def solve_offset(self, sparsity: float, exact: bool = True) -> float:
        """Set b so that the fraction ``sparsity`` of all weights is pruned; returns b.

        A weight of group g is pruned iff logit(|w|) − s_g ≤ b, so b is the k-th smallest such key
        (k = round(sparsity·N)); ``exact`` ranks every weight in float64 and puts b midway between the
        k-th and (k+1)-th keys, otherwise a strided subsample of at most ``SAMPLE_CAP`` keys is ranked.
        """
        weights = self._weights()
        total = sum(self.numel)
        logits = torch.stack([s.detach() for s in self.logits]).double().cpu().tolist()
        stride = 1 if exact else max(1, total // SAMPLE_CAP)
        dtype = torch.float64 if exact else weights[0].dtype
        sizes = [math.ceil(w.numel() / stride) for w in weights]
        keys = torch.empty(sum(sizes), dtype=dtype, device=weights[0].device)
        for segment, w in zip(keys.split(sizes), weights, strict=True):
            segment.copy_(w.detach().reshape(-1)[::stride])
        keys.abs_().clamp_max_(1.0).logit_()  # |w| ≥ 1 → +inf: a sigmoid threshold never reaches it
        for segment, g in zip(keys.split(sizes), self.plan.groups, strict=True):
            segment.sub_(logits[g])
        n = keys.numel()
        k = min(n, max(0, round(sparsity * n)))
        if k == 0:
            offset = -OFFSET_LIMIT
        elif not exact:
            offset = float(torch.kthvalue(keys, k).values)
        else:
            lo = float(torch.kthvalue(keys, k).values)
            hi = float(torch.kthvalue(keys, k + 1).values) if k < n else math.inf
            offset = _between(lo, hi)
        self.offset = min(max(offset, -OFFSET_LIMIT), OFFSET_LIMIT)
        return self.offset


def _between(lo: float, hi: float) -> float:
    """A point strictly above ``lo`` and at most ``hi`` (midway when both are finite)."""
    if math.isfinite(lo) and math.isfinite(hi):
        return lo if lo == hi else lo + (hi - lo) / 2
    if math.isfinite(lo):
        return lo + 1.0
    if math.isfinite(hi):
        return hi - 1.0 if lo == -math.inf else hi
    return lo  # both ±inf: nothing to place between


# ------------------------------------------------------------------------------ task-loss weighting


class AdaptiveWeighting:
    """The reference trainer's adaptive task weights, exactly, as a function of step and losses.

    From ``start`` (0-based step) on, each call appends d_t = |L_t(i−1) − L_t(i)| / L_t(i) to a FIFO per task
    (from the second call on) and remembers L_t(i); once a FIFO holds more than ``window`` entries the oldest
    is dropped and m_t becomes the mean of the last ``window``. m_t = 1 until then. Returns
    w_t = K·m_t / Σ_k m_k every step.
    """

    def __init__(self, tasks: Sequence[str], start: int, window: int, k: float) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.tasks, self.start, self.window, self.k = tuple(tasks), start, window, float(k)
        self.m = dict.fromkeys(self.tasks, 1.0)
        self.previous: dict[str, float] | None = None
        self.fifo: dict[str, deque[float]] = {t: deque() for t in self.tasks}

    def __call__(self, step: int, losses: Mapping[str, float]) -> dict[str, float]:
        if step >= self.start:
            if self.previous is not None:
                for t in self.tasks:
                    current = losses[t]
                    change = abs(self.previous[t] - current) / current if current != 0 else 0.0
                    self.fifo[t].append(change)
            self.previous = {t: float(losses[t]) for t in self.tasks}
            for t in self.tasks:
                if len(self.fifo[t]) > self.window:
                    self.fifo[t].popleft()
                    self.m[t] = sum(self.fifo[t]) / self.window
        total = sum(self.m.values())
        if total <= 0:
            return {t: self.k / len(self.tasks) for t in self.tasks}
        return {t: self.k * self.m[t] / total for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {
            "m": dict(self.m),
            "previous": None if self.previous is None else dict(self.previous),
            "fifo": {t: list(q) for t, q in self.fifo.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = {t: float(state["m"][t]) for t in self.tasks}
        self.previous = None if state["previous"] is None else dict(state["previous"])
        self.fifo = {t: deque(float(v) for v in state["fifo"][t]) for t in self.tasks}


# --------------------------------------------------------------------------------------- callback


class TargetSchedule:
    """The ``control: target`` schedule: GMP cubic ramp from 0 at t0 to the target at t_end, then held."""

    def __init__(self, target: float, total_steps: int, ramp_start: float, ramp_end: float, every: int):
        self.target, self.total_steps, self.every = target, total_steps, every
        self.start_step, self.end_step = gmp_steps(total_steps, ramp_start, ramp_end)

    def sparsity(self, step: int) -> float:
        return gmp_sparsity(step, self.target, self.start_step, self.end_step)

    def acts_after(self, step: int) -> bool:
        """Whether the controller solves after optimizer step ``step`` (for the forward pass of step + 1)."""
        following = step + 1
        if step == self.total_steps - 1 or following == self.end_step:
            return True
        return following >= self.start_step and (following - self.start_step) % self.every == 0


class AdapMTLCallback(TrainCallback):
    """Adaptive task weights, the faithful freeze or the target controller, and per-step scalars."""

    def __init__(
        self,
        bank: ThresholdBank,
        tasks: Sequence[str],
        priorities: Mapping[str, float],
        weighting: AdaptiveWeighting | None,
        schedule: TargetSchedule | None,
        freeze_at: float | None,
    ) -> None:
        self.bank, self.tasks = bank, tuple(tasks)
        self.priorities = {t: float(priorities.get(t, 1.0)) for t in self.tasks}
        self.weighting, self.schedule, self.freeze_at = weighting, schedule, freeze_at
        self.weights = dict(self.priorities)
        self.frozen = False
        self.scheduled = 0.0 if schedule is None else schedule.sparsity(0)
        self._zeros: list[int] | None = None
        self.solves = 0

    def loss_weights(self, step: int, losses: Mapping[str, Tensor]) -> Mapping[str, float] | None:
        if self.weighting is None:
            return None
        adaptive = self.weighting(step, {t: float(losses[t].detach()) for t in self.tasks})
        self.weights = {t: self.priorities[t] * adaptive[t] for t in self.tasks}
        return self.weights

    def after_backward(self, step: int, runner: StepRunner | None) -> None:
        self._zeros = None
        if self.freeze_at is None:
            return  # the counts are read in after_step: on a GPU, without draining the queue before it
        self._zeros = self.bank.last_zeros()
        if self._zeros is None:
            return
        # The reference rule: thresholds do not move (no loss, no decay) on a step whose forward pass was at
        # or above the ratio; dropping the gradient makes the optimizer skip them.
        self.frozen = sum(self._zeros) / sum(self.bank.numel) >= self.freeze_at
        if self.frozen:
            for s in self.bank.logits:
                s.grad = None

    def after_step(self, step: int, runner: StepRunner | None) -> dict[str, float]:
        scalars: dict[str, float] = {}
        if self._zeros is None:
            self._zeros = self.bank.last_zeros()
        taus = self.bank.last_taus  # the forward pass of this step
        for group, tau in zip(self.bank.group_names, taus, strict=True):
            scalars[f"adapmtl.threshold.{_key(group)}"] = tau
        if self._zeros is not None:
            summary = self.bank.summary(self._zeros)
            scalars["adapmtl.sparsity"] = summary.pop("overall")
            scalars.update({f"adapmtl.sparsity.{_key(c)}": v for c, v in summary.items()})
        scalars.update({f"adapmtl.weight.{t}": w for t, w in self.weights.items()})
        if self.freeze_at is not None:
            scalars["adapmtl.frozen"] = float(self.frozen)
        if self.schedule is not None:
            if self.schedule.acts_after(step):
                last = step == self.schedule.total_steps - 1
                self.scheduled = self.schedule.sparsity(step + 1)
                self.bank.solve_offset(self.scheduled, exact=last)
                self.solves += 1
            scalars["adapmtl.offset"] = self.bank.offset
            scalars["adapmtl.scheduled"] = self.scheduled
        return scalars

    def state_dict(self) -> dict[str, Any]:
        """The controller and the weighting; the thresholds themselves are model parameters."""
        return {
            "offset": self.bank.offset,
            "weights": dict(self.weights),
            "frozen": self.frozen,
            "scheduled": self.scheduled,
            "solves": self.solves,
            "weighting": None if self.weighting is None else self.weighting.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bank.offset = float(state["offset"])
        self.weights = {t: float(w) for t, w in state["weights"].items()}
        self.frozen, self.scheduled = bool(state["frozen"]), float(state["scheduled"])
        self.solves = int(state["solves"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])


def _key(name: str) -> str:
    """A log-key segment for a component or group name (``head/normal`` → ``head.normal``)."""
    return name.replace("/", ".")


# ------------------------------------------------------------------------------------------ params


class AdapMTLParams(MethodParams):
    start: Literal["dense", "init"] = Field(
        "dense",
        description="'dense': the shared dense checkpoint, thresholds reset to s_init, finetune budget; "
        "'init': the shared initialisation, dense + finetune steps",
    )
    s_init: float = Field(
        -15.0,
        ge=-1.0e4,
        le=100.0,
        description="initial threshold logit (reference: -15 ResNet34, -18 MobileNetV2)",
    )
    weight_decay: float | None = Field(
        None, ge=0.0, description="coupled L2 on every parameter, thresholds included; None: the recipe's"
    )
    control: Literal["target", "faithful"] = Field(
        "target",
        description="'target': solved global logit offset on a cubic ramp, exact at the end; "
        "'faithful': the reference's freeze at the target, sparsity set by s_init and weight_decay",
    )
    wd_search: list[float] | None = Field(
        None,
        min_length=1,
        description="control faithful: the reference's per-target weight-decay sweep; ascending weight "
        "decays, each a full run from the start, the first whose run reaches the target is kept",
    )
    thresholds: Literal["component", "network", "layer"] = Field(
        "component", description="one learnable threshold per component, for the whole network, or per layer"
    )
    adaptive_weighting: bool = Field(True, description="the reference's sliding-window task-loss weights")
    weighting_start: float = Field(
        0.25, ge=0.0, le=1.0, description="fraction of the budget where the weighting starts (5000/20000)"
    )
    window: float = Field(
        0.025, gt=0.0, le=1.0, description="sliding window as a fraction of the budget (500/20000), >= 1 step"
    )
    K: Literal["tasks", 3] | None = Field(
        None, description="weights sum to K: 'tasks' (T) or the reference's 3; None: 3 if faithful else T"
    )
    ramp_start: float = Field(
        0.125, ge=0.0, lt=1.0, description="control target: fraction where the ramp starts"
    )
    ramp_end: float = Field(
        0.75, gt=0.0, le=1.0, description="control target: fraction where it reaches the target"
    )
    control_every: int | None = Field(
        None, ge=1, description="control target: steps between solves; None: max(1, T // 500)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> AdapMTLParams:
        if not self.ramp_start < self.ramp_end:
            raise ValueError(
                f"ramp_start ({self.ramp_start}) must be smaller than ramp_end ({self.ramp_end})"
            )
        weighting = {"weighting_start", "window", "K"} & self.model_fields_set
        if not self.adaptive_weighting and weighting:
            raise ValueError(f"{', '.join(sorted(weighting))} without adaptive_weighting has no effect")
        ramp = {"ramp_start", "ramp_end", "control_every"} & self.model_fields_set
        if self.control == "faithful" and ramp:
            raise ValueError(f"{', '.join(sorted(ramp))} belong to control 'target', not 'faithful'")
        if self.wd_search is not None:
            if self.control != "faithful":
                raise ValueError("wd_search belongs to control 'faithful' (control 'target' needs no search)")
            if self.weight_decay is not None:
                raise ValueError(
                    "give weight_decay or wd_search, not both (the search sets the weight decay)"
                )
            decays = self.wd_search
            if any(not math.isfinite(d) or d < 0 for d in decays):
                raise ValueError(f"wd_search {decays}: every weight decay must be finite and >= 0")
            if any(b <= a for a, b in pairwise(decays)):
                raise ValueError(
                    f"wd_search {decays} must be strictly ascending (the sweep stops at the first "
                    "weight decay that reaches the target)"
                )
        return self

    @property
    def k(self) -> Literal["tasks", 3]:
        if self.K is not None:
            return self.K
        return 3 if self.control == "faithful" else "tasks"


class SingleThresholdParams(AdapMTLParams):
    thresholds: Literal["network"] = Field("network", description="one threshold for the whole network")


class FixedWeightsParams(AdapMTLParams):
    adaptive_weighting: Literal[False] = Field(False, description="task losses keep the recipe's weights")


class STRParams(AdapMTLParams):
    thresholds: Literal["layer"] = Field("layer", description="one learnable threshold per layer (STR)")
    adaptive_weighting: Literal[False] = Field(False, description="no task weighting (STR)")


# ------------------------------------------------------------------------------------------ methods


@METHODS.register("adapmtl")
class AdapMTL(PruningMethod):
    """AdapMTL: learnable soft thresholds per component and adaptive task-loss weights (Xiang et al. 2024)."""

    Params = AdapMTLParams
    # 2: τ = torch.sigmoid(s) in float32, as the reference; 3: the threshold gradient's dots summed per slice
    # in float64; 4: slices of 2^20 elements instead of 2^18 (its ablations and STR inherit it)
    revision = 4
    starts_from = "dense"
    sparsity_tolerance: ClassVar[float] = 0.01
    contract_params: ClassVar[dict[str, Any]] = {}
    step_kind = "adapmtl"  # soft-thresholded weights and its controller (tools.gpu_check times them apart)

    def __init__(self, params: AdapMTLParams) -> None:  # type: ignore[override]
        super().__init__(params)
        self.starts_from = params.start  # the params choose (the class's value is the default)
        if params.control == "faithful":
            # The reference rule does not enforce the target: the cell reports what it reached.
            self.sparsity_tolerance = 1.0

    def training_spec(self, ctx: MethodContext) -> TrainSpec:
        """The budget and recipe: finetune (from dense) or dense + finetune steps (from init), with the
        method's weight decay on every parameter (thresholds included)."""
        p: AdapMTLParams = self.params  # type: ignore[assignment]
        base = ctx.spec.finetune if p.start == "dense" else ctx.sparse_training_spec()
        return base.model_copy(
            update={"weight_decay": base.weight_decay if p.weight_decay is None else p.weight_decay}
        )

    def build_bank(self, ctx: MethodContext) -> ThresholdBank:
        p: AdapMTLParams = self.params  # type: ignore[assignment]
        group_of: dict[str, Callable[[str], str]] = {
            "component": ctx.component_of,
            "network": lambda name: "network",
            "layer": lambda name: name.removesuffix(".weight"),
        }
        return ThresholdBank(ctx.model, ctx.prunable(), group_of[p.thresholds], ctx.component_of, p.s_init)

    def planned_steps(self, spec: RunSpec) -> int:
        """The fairness rule's budget; with ``wd_search`` once per weight decay of the grid: an upper bound,
        as the search stops at the first weight decay whose run reaches the target."""
        steps = super().planned_steps(spec)
        decays = self.params.wd_search  # type: ignore[attr-defined]
        return steps * len(decays) if decays else steps

    def check_spec(self, spec: RunSpec) -> None:
        if self.params.wd_search and self.planned_steps(spec) == 0:  # type: ignore[attr-defined]
            raise ValueError("wd_search needs a training budget: its runs have no steps")

    def _callback(
        self, ctx: MethodContext, bank: ThresholdBank, spec: TrainSpec
    ) -> tuple[AdapMTLCallback, TargetSchedule | None]:
        """A fresh callback for one training run of ``spec.steps`` steps (the target controller solves the
        first offset here)."""
        p: AdapMTLParams = self.params  # type: ignore[assignment]
        steps = spec.steps
        weighting = None
        if p.adaptive_weighting:
            k = len(ctx.tasks) if p.k == "tasks" else 3
            weighting = AdaptiveWeighting(
                ctx.tasks, round(p.weighting_start * steps), max(1, round(p.window * steps)), k
            )
        schedule = None
        if p.control == "target":
            every = p.control_every or max(1, steps // 500)
            schedule = TargetSchedule(ctx.target, steps, p.ramp_start, p.ramp_end, every)
            bank.solve_offset(schedule.sparsity(0), exact=True)
        callback = AdapMTLCallback(
            bank,
            ctx.tasks,
            spec.task_weights or {},
            weighting,
            schedule,
            freeze_at=ctx.target if p.control == "faithful" else None,
        )
        return callback, schedule

    def _search(self, ctx: MethodContext, bank: ThresholdBank, spec: TrainSpec) -> AdapMTLCallback:
        """The reference's weight-decay sweep (``control: faithful``): a full run per weight decay, ascending,
        each from the same start (weights, BN statistics, thresholds at s_init; a fresh optimizer and fresh
        task weights), until a run's final sparsity reaches the target; that run is kept (else the last).
        Every run's weight decay and final sparsity go to the log and to ``method_state.wd_search``."""
        p: AdapMTLParams = self.params  # type: ignore[assignment]
        assert p.wd_search is not None
        start = {k: v.detach().to("cpu", copy=True) for k, v in ctx.model.state_dict().items()}
        callback: AdapMTLCallback | None = None
        for i, decay in enumerate(p.wd_search):
            if i:
                ctx.model.load_state_dict(start)
            callback, _ = self._callback(ctx, bank, spec)
            used = ctx.steps_used
            ctx.train(spec.model_copy(update={"weight_decay": decay}), phase="train", callbacks=[callback])
            if ctx.steps_used == used:
                # Replayed on resume (a finished call returns at once, spending nothing): the search went on
                # past it, and the call the checkpoint belongs to restores what it recorded.
                continue
            sparsity = sum(bank.zeros_now()) / sum(bank.numel)
            tried = [*ctx.recorded.get("wd_search", []), {"weight_decay": decay, "sparsity": sparsity}]
            ctx.record(wd_search=tried)
            ctx.log(**{"adapmtl.search.weight_decay": decay, "adapmtl.search.sparsity": sparsity})
            if sparsity >= ctx.target:
                break
        assert callback is not None
        return callback

    def run(self, ctx: MethodContext) -> None:
        p: AdapMTLParams = self.params  # type: ignore[assignment]
        spec = self.training_spec(ctx)
        steps = spec.steps
        bank = self.build_bank(ctx)
        schedule = None
        if p.wd_search is None:
            callback, schedule = self._callback(ctx, bank, spec)
        bank.install()
        try:
            if p.wd_search is None:
                ctx.train(spec, phase="train", callbacks=[callback])
            else:
                callback = self._search(ctx, bank, spec)
            if schedule is not None:
                # Idempotent after the last step's exact solve; re-targets best_val's selected weights.
                before = bank.offset
                bank.solve_offset(ctx.target, exact=True)
                if bank.offset != before:
                    ctx.log(**{"adapmtl.final_solve": 1, "adapmtl.offset": bank.offset})
            final_taus = bank.thresholds()
            logits = {g: float(s.detach()) for g, s in zip(bank.group_names, bank.logits, strict=True)}
        finally:
            bank.remove()
        weights = ctx.prunable()
        masks = {name: weights[name].detach() != 0 for name in bank.names}
        ctx.apply_masks(masks)
        zeros = [int((~masks[n]).sum()) for n in bank.names]
        summary = bank.summary(zeros)
        state: dict[str, Any] = {
            "sparsity": summary["overall"],
            "sparsity_by_component": {c: v for c, v in summary.items() if c != "overall"},
            "thresholds": final_taus,
            "logits": logits,
            "offset": bank.offset,
            "task_weights": dict(callback.weights),
            "steps": steps,
        }
        if p.wd_search is not None:
            state["weight_decay"] = ctx.recorded["wd_search"][-1]["weight_decay"]  # the kept run's
        if schedule is not None:
            state["solves"] = callback.solves
        ctx.record(**state)
        ctx.log(
            **{"adapmtl.final_sparsity": summary["overall"]},
            **{f"adapmtl.final_sparsity.{_key(c)}": v for c, v in summary.items() if c != "overall"},
        )


@METHODS.register("adapmtl-single-threshold")
class AdapMTLSingleThreshold(AdapMTL):
    """AdapMTL without adaptive thresholds: one learnable threshold for the whole network (an ablation)."""

    Params = SingleThresholdParams


@METHODS.register("adapmtl-fixed-weights")
class AdapMTLFixedWeights(AdapMTL):
    """AdapMTL without adaptive task weighting: component thresholds, the recipe's fixed task weights."""

    Params = FixedWeightsParams


@METHODS.register("str")
class STR(AdapMTL):
    """STR: one learnable soft threshold per layer, no task weighting (Kusupati et al., ICML 2020)."""

    Params = STRParams
