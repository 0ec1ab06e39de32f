"""Inference cost: theoretical FLOPs counted from shapes and the weights themselves, and measured latency.

FLOP conventions (one image, batch 1, eval mode):

- A multiply-add is 2 FLOPs, as in `torch.utils.flop_counter.FlopCounterMode`.
- Convolution, dense: 2 · out_positions · (C_in/groups · k_h · k_w) · C_out = 2 · out_positions ·
  weight.numel(). Dilation does not change it; a depthwise conv (groups = C) costs 2 · C · k_h · k_w per
  position. Transposed convs use input positions instead (as FlopCounterMode does).
- Convolution, sparse: 2 · out_positions · nnz(weight): a pruned (zero) weight costs nothing.
- Linear (aten mm/addmm/bmm): 2 · m · k · n dense; sparse: 2 · rows · nnz(weight).
- Bias: 1 FLOP per output element (conv and linear), even where the bias is zero.
- BatchNorm (eval: a per-channel affine): 2 per element. ReLU / ReLU6 / clamp: 1 per element.
  Dropout in eval runs no op: 0.
- LayerNorm: 5 per element to normalise (mean: 1 add; x − μ: 1; its square: 1 and the variance sum: 1;
  × 1/σ: 1), + 1 per element for the weight and + 1 for the bias: 7 with both (the per-row 1/√(σ² + ε)
  is not counted).
- GELU: 5 per element (x/√2, erf, + 1, × x, × 0.5; a transcendental function counts 1, as exp below).
- Softmax: 5 per input element (max: 1 comparison; x − max: 1; exp: 1; the sum: 1; the division: 1).
- Attention: q kᵀ and (softmax) v are activation × activation matmuls (aten bmm): 2 · m · k · n, the same
  dense and sparse; the 1/√d scaling is an elementwise multiply.
- Elementwise add/sub/mul/div between activations — residual adds, the ASPP branch sum — 1 per output
  element per op (summing four branches is three adds).
- Max-pool: (k_h · k_w − 1) comparisons per output element; avg-pool: k_h · k_w per output element;
  global average / mean: 1 per input element.
- Bilinear upsampling: 7 FLOPs per output element (4 multiplies by the interpolation weights + 3 adds;
  the per-row/column index and weight computation is not counted).
- Views, copies, concatenation, padding and allocation are free. Every non-conv/linear op costs the same
  dense and sparse: masking only removes multiply-adds.
- Ops that touch no activation only transform weights (e.g. a mask multiplied in a forward pre-hook):
  they are input-independent, so they are free (constant-folded at deployment) and their result counts as
  a weight — its zeros are seen by the sparse count.

How ops are caught: the forward runs inside a `TorchDispatchMode` (the mechanism FlopCounterMode uses), so
every aten op is seen, whether it comes from a module (`nn.Conv2d`) or is done functionally inside a
forward (the residual `+`, the branch sum, `F.relu`). The component is tracked with forward pre/post hooks
on each `model.heads[task]`: an op run inside head `t` → `head/<t>`; anything else the model runs is
shared → `backbone`. No knowledge of BasicBlock/ASPP/InvertedResidual and no name matching is involved,
so a new architecture is counted correctly as long as its ops have a formula here; an op on activations
with no formula and not known to be free is listed in `FlopBreakdown.uncounted` and warned about.

The forward is shape-only: inside the mode every activation op runs on meta copies of its inputs (after
the weight's nnz is read from the real tensor), so counting a full-width model costs no compute on any
device and never touches BN statistics. Should an op lack a meta kernel, the pass is repeated for real on
the model's device with a zeros input. The head outputs are then upsampled bilinearly to `output_hw` with
`mtlprune.engine.tasks.upsample_to`, exactly as evaluation does, and that upsampling is charged to the task's
head.

Data-dependent counts (`count_flops_input_sparse` for any model, `count_flops_shared` for a delta-shared
model; docs/accounting.md derives the rule): a real forward on test images under the same mode, every op
that is not bilinear charged as above, and a bilinear op (conv, mm/addmm, bmm) by the products of a
non-zero input entry with a non-zero weight (or second operand) it needs (`nonzero_products`); a sub-task
of a delta-shared model runs each bilinear op in the cheaper of the direct form and the delta form
y_b + f(δa, b_b) + f(a_s, δb) on the base's result (`_DataCounter`).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from mtlprune.engine.models.delta import DeltaSharedMTL
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.tasks import upsample_to

aten = torch.ops.aten

BACKBONE = "backbone"
# Cost categories of a FlopBreakdown; CONV is the only one that differs between dense and sparse.
CONV = "conv"  # conv and linear multiply-adds (what FlopCounterMode counts)
BIAS = "bias"
NORM = "norm"
ACTIVATION = "activation"
ELEMENTWISE = "elementwise"  # residual adds, branch sums
POOL = "pool"
UPSAMPLE = "upsample"
BILINEAR_FLOPS_PER_OUTPUT = 7


def _ops(*names: str) -> frozenset[Any]:
    """aten op packets by name; one this torch version lacks is skipped."""
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


_CONV_OPS = _ops("convolution", "_convolution", "convolution_overrideable")
_MM_OPS = _ops("mm", "addmm", "bmm", "baddbmm")
_BN_OPS = _ops(
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_batch_norm_no_update",
    "_batch_norm_with_update",
    "cudnn_batch_norm",
    "miopen_batch_norm",
)
_ACTIVATION_OPS = _ops(
    "relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clamp_max", "clamp_max_", "threshold", "threshold_",
)  # fmt: skip
_LAYER_NORM_OPS = _ops("native_layer_norm")
LAYER_NORM_FLOPS_PER_ELEMENT = 5  # + 1 each for an elementwise weight and bias (module docstring)
_GELU_OPS = _ops("gelu", "gelu_")
GELU_FLOPS_PER_ELEMENT = 5
_SOFTMAX_OPS = _ops("_softmax", "_safe_softmax")
SOFTMAX_FLOPS_PER_ELEMENT = 5
_ELEMENTWISE_OPS = _ops("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_")
_MAX_POOL_OPS = _ops("max_pool2d", "max_pool2d_with_indices")
_MEAN_OPS = _ops("mean", "sum", "adaptive_avg_pool2d", "_adaptive_avg_pool2d")
# data movement and allocation; view ops (`OpOverload.is_view`) are free as well
_FREE_OPS = _ops(
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
    "full_like", "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "fill_", "zero_",
    "clone", "copy_", "_to_copy", "lift_fresh", "lift_fresh_copy", "_unsafe_view", "split",
    "split_with_sizes", "unbind", "chunk", "cat", "stack", "constant_pad_nd", "index_select",
    "upsample_nearest2d",
    "native_dropout",  # only reached in training mode, which the count never uses
)  # fmt: skip


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


def _first_tensor(out: Any) -> Tensor:
    return next(t for t in tree_flatten(out)[0] if isinstance(t, Tensor))


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = list(value)
    return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))


@dataclass
class FlopBreakdown:
    """FLOPs by component (`backbone`, `head/<task>`) and category (`conv`, `bias`, `norm`, ...)."""

    dense: dict[str, dict[str, int]] = field(default_factory=dict)
    sparse: dict[str, dict[str, int]] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)  # aten op → calls with no formula

    def add(self, component: str, category: str, dense: int, sparse: int | None = None) -> None:
        for table, value in ((self.dense, dense), (self.sparse, dense if sparse is None else sparse)):
            row = table.setdefault(component, {})
            row[category] = row.get(category, 0) + int(value)

    def total(
        self,
        kind: str = "dense",
        components: Iterable[str] | None = None,
        categories: Iterable[str] | None = None,
    ) -> int:
        """Sum over the given components and categories (all when None)."""
        table = {"dense": self.dense, "sparse": self.sparse}[kind]
        comps = table.keys() if components is None else components
        cats = None if categories is None else set(categories)
        return sum(
            v
            for c in comps
            for cat, v in table.get(c, {}).items()
            if cats is None or cat in cats  # a component that ran no op counts 0
        )


def _meta(x: Any) -> Any:
    return x.to("meta") if isinstance(x, Tensor) and x.device.type != "meta" else x


def _nnz(t: Tensor) -> int:
    """Non-zeros of a real tensor; a meta tensor has no values and counts as dense."""
    return t.numel() if t.device.type == "meta" else int(torch.count_nonzero(t))


class _Counter(TorchDispatchMode):
    """Charges every op on the activations to the component on top of `stack` (see the module docstring).

    Activations are the input and everything computed from it. An op that touches none only transforms
    weights: it runs as it is and is not charged, and its result is a weight. With `to_meta`, each charged
    op runs on meta copies of its inputs after the weight's nnz is read, so the pass needs no compute and
    cannot change the model.
    """

    def __init__(self, breakdown: FlopBreakdown, to_meta: bool) -> None:
        super().__init__()
        self.breakdown = breakdown
        self.to_meta = to_meta
        self.stack: list[str] = [BACKBONE]
        self.activations: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def mark(self, tree: Any) -> None:
        for t in tree_flatten(tree)[0]:
            if isinstance(t, Tensor):
                self.activations[t] = True

    def _is_activation(self, t: Any) -> bool:
        return isinstance(t, Tensor) and t in self.activations

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not any(self._is_activation(t) for t in tree_flatten((args, kwargs))[0]):
            return func(*args, **kwargs)  # input-independent (a weight transform): constant-folded, free
        weight_nnz = self._weight_nnz(func.overloadpacket, args)
        originals = args
        if self.to_meta:
            args, kwargs = tree_map(_meta, args), tree_map(_meta, kwargs)
        out = func(*args, **kwargs)
        if self.to_meta:
            out = tree_map(_meta, out)
        self.mark(out)
        # an in-place op writes an activation into its argument, whichever copy of it the op ran on
        for schema_arg, original in zip(func._schema.arguments, originals, strict=False):
            if schema_arg.alias_info is not None and schema_arg.alias_info.is_write:
                self.mark(original)
        self._charge(func, args, kwargs, out, weight_nnz)
        return out

    def _weight_nnz(self, packet: Any, args: Any) -> tuple[int, int] | None:
        """(operand index, nnz) of the weight of a conv or matmul, read before any move to meta."""
        if packet in _CONV_OPS:
            return 1, _nnz(args[1])
        if packet in _MM_OPS:
            a, b = (args[0], args[1]) if packet in (aten.mm, aten.bmm) else (args[1], args[2])
            if not self._is_activation(b):
                return 1, _nnz(b)
            if not self._is_activation(a):
                return 0, _nnz(a)
        return None  # activation × activation: dense

    def _charge(
        self, func: Any, args: Any, kwargs: Any, out: Any, weight_nnz: tuple[int, int] | None
    ) -> None:
        packet = func.overloadpacket
        component = self.stack[-1]
        add = self.breakdown.add
        if packet in _CONV_OPS:
            x, w, bias, transposed = args[0], args[1], args[2], bool(args[6])
            y = _first_tensor(out)
            positions = _numel(x.shape[2:]) if transposed else _numel(y.shape[2:])
            positions *= int(y.shape[0])
            nnz = weight_nnz[1] if weight_nnz else w.numel()
            add(component, CONV, 2 * positions * w.numel(), 2 * positions * nnz)
            if bias is not None:
                add(component, BIAS, y.numel())
        elif packet in _MM_OPS:
            a = args[0] if packet in (aten.mm, aten.bmm) else args[1]
            y = _first_tensor(out)
            dense = 2 * y.numel() * int(a.shape[-1])
            sparse = dense
            if weight_nnz is not None:
                # y = a @ b: a non-zero of b (k, n) meets the m rows of a, one of a (m, k) the n columns of b
                idx, nnz = weight_nnz
                sparse = 2 * nnz * int(y.shape[-2] if idx == 1 else y.shape[-1])
            add(component, CONV, dense, sparse)
            if packet in (aten.addmm, aten.baddbmm):
                add(component, BIAS, y.numel())
        elif packet in _BN_OPS:
            add(component, NORM, 2 * args[0].numel())
        elif packet in _ACTIVATION_OPS:
            add(component, ACTIVATION, _first_tensor(out).numel())
        elif packet in _LAYER_NORM_OPS:
            x, weight, bias = args[0], args[2] if len(args) > 2 else None, args[3] if len(args) > 3 else None
            per_element = LAYER_NORM_FLOPS_PER_ELEMENT + (weight is not None) + (bias is not None)
            add(component, NORM, per_element * x.numel())
        elif packet in _GELU_OPS:
            add(component, ACTIVATION, GELU_FLOPS_PER_ELEMENT * _first_tensor(out).numel())
        elif packet in _SOFTMAX_OPS:
            add(component, ACTIVATION, SOFTMAX_FLOPS_PER_ELEMENT * args[0].numel())
        elif packet in _ELEMENTWISE_OPS:
            add(component, ELEMENTWISE, _first_tensor(out).numel())
        elif packet in _MAX_POOL_OPS:
            kh, kw = _pair(args[1] if len(args) > 1 else kwargs["kernel_size"])
            add(component, POOL, (kh * kw - 1) * _first_tensor(out).numel())
        elif packet is aten.avg_pool2d:
            kh, kw = _pair(args[1] if len(args) > 1 else kwargs["kernel_size"])
            add(component, POOL, kh * kw * _first_tensor(out).numel())
        elif packet in _MEAN_OPS:
            add(component, POOL, args[0].numel())
        elif packet is aten.upsample_bilinear2d:
            add(component, UPSAMPLE, BILINEAR_FLOPS_PER_OUTPUT * _first_tensor(out).numel())
        elif packet in _FREE_OPS or func.is_view:
            pass
        else:
            name = str(packet)
            self.breakdown.uncounted[name] = self.breakdown.uncounted.get(name, 0) + 1


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the pass, then every submodule's own train/eval flag back (mixed modes survive)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _track_heads(model: MTLModel, counter: _Counter) -> list[Any]:
    """Pre/post hooks that put `head/<task>` on the counter's stack while that head runs."""

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counter.stack.append(name)

        return hook

    def leave(*_: Any) -> None:
        counter.stack.pop()

    handles = []
    for task, head in model.heads.items():
        handles.append(head.register_forward_pre_hook(enter(f"head/{task}")))
        handles.append(head.register_forward_hook(leave, always_call=True))
    return handles


def _run_counted(
    model: MTLModel,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None,
    in_channels: int,
    to_meta: bool,
) -> FlopBreakdown:
    breakdown = FlopBreakdown()
    for component in model.components():
        breakdown.add(component, CONV, 0)
    params = list(model.parameters())
    counter = _Counter(breakdown, to_meta)
    ref = params[0] if params else None
    device = torch.device("meta") if to_meta or ref is None else ref.device
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((1, in_channels, *input_hw), device=device, dtype=dtype)
    counter.mark(x)
    target = None if output_hw is None else torch.empty((1, *output_hw), device="meta")
    handles = _track_heads(model, counter)
    try:
        with torch.no_grad(), counter:
            outputs = model(x)
            if target is not None:
                for task in model.tasks:
                    counter.stack.append(f"head/{task}")
                    upsample_to(outputs[task], target)  # the evaluation's own upsampling
                    counter.stack.pop()
    finally:
        for handle in handles:
            handle.remove()
    return breakdown


def flop_breakdown(
    model: MTLModel,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None = None,
    *,
    in_channels: int = 3,
    shape_only: bool = True,
) -> FlopBreakdown:
    """FLOPs of one image's forward by component and category (conventions in the module docstring).

    `shape_only=False` skips the meta-device pass and runs the forward for real on the model's device.
    """
    with _eval_mode(model):
        try:
            breakdown = _run_counted(model, input_hw, output_hw, in_channels, to_meta=shape_only)
        except (NotImplementedError, RuntimeError):
            if not shape_only or all(p.device.type == "meta" for p in model.parameters()):
                raise
            # some op has no meta kernel: count a real pass on the model's device instead
            breakdown = _run_counted(model, input_hw, output_hw, in_channels, to_meta=False)
    if breakdown.uncounted:
        warnings.warn(
            f"FLOPs not counted for ops with no formula in mtlprune.engine.costs: {breakdown.uncounted}",
            stacklevel=2,
        )
    return breakdown


def count_flops(
    model: MTLModel,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None = None,
    *,
    in_channels: int = 3,
) -> dict[str, int]:
    """Dense and sparse FLOPs of one image: whole multi-task forward, backbone, each head, each task path.

    `output_hw` is the evaluation label resolution; each head's upsampling to it is part of that head
    (None: no upsampling counted). A task's path is backbone + its head: what its inference alone costs.
    """
    breakdown = flop_breakdown(model, input_hw, output_hw, in_channels=in_channels)
    result: dict[str, int] = {}
    parts: dict[str, dict[str, int]] = {}
    for kind in ("dense", "sparse"):
        parts[kind] = {c: breakdown.total(kind, [c]) for c in model.components()}
        result[f"flops_{kind}"] = sum(parts[kind].values())
    for kind in ("dense", "sparse"):
        result[f"flops_{kind}.backbone"] = parts[kind][BACKBONE]
    for kind in ("dense", "sparse"):
        for task in model.tasks:
            result[f"flops_{kind}.head.{task}"] = parts[kind][f"head/{task}"]
    for kind in ("dense", "sparse"):
        for task in model.tasks:
            result[f"flops_{kind}.path.{task}"] = parts[kind][BACKBONE] + parts[kind][f"head/{task}"]
    return result


def measure_latency(
    model: nn.Module,
    input_hw: tuple[int, int],
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str = "cpu",
    *,
    in_channels: int = 3,
) -> dict[str, float]:
    """Wall time of `model(x)` in ms (median, min, max over `repeats` after `warmup` calls), eval, no_grad.

    This is measured, not modelled: masked (zeroed) weights still run as dense tensors, so masks alone
    give no speed-up; only a structurally smaller or sparse-kernel model would be faster. On CUDA the
    device is synchronised before and after each timed call. The model is moved to `device` for the
    measurement and back afterwards; its train/eval flags are restored.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0, batch_size >= 1; got {repeats}, {warmup}, {batch_size}"
        )
    device = torch.device(device)
    params = list(model.parameters())
    home = params[0].device if params else None
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, in_channels, *input_hw), generator=generator).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[float] = []
    model.to(device)
    try:
        with _eval_mode(model), torch.no_grad():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        if home is not None:
            model.to(home)
    return {
        "latency_ms": statistics.median(times),
        "latency_ms_min": min(times),
        "latency_ms_max": max(times),
        "latency_repeats": repeats,
    }


# --------------------------------------------------------------------------- data-dependent FLOP counts

SHARE = "share"  # what computation sharing adds: y_b + c, a bias delta, forming and thresholding δ
THRESHOLD_FLOPS_PER_ELEMENT = 2  # |δ| and its comparison with τ at a sharing point
INPUT_SPARSE_IMAGES = 4  # test images of the data-dependent count (measure_costs)
_BILINEAR_OPS = _CONV_OPS | _MM_OPS


def _operands(packet: Any, args: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """(a, b, bias) of a bilinear op: conv (input, weight, bias), mm/bmm (a, b), addmm (bias, a, b)."""
    if packet in _CONV_OPS:
        return args[0], args[1], args[2]
    if packet in (aten.addmm, aten.baddbmm):
        return args[1], args[2], args[0]
    return args[0], args[1], None


def nonzero_products(packet: Any, args: Any, a: Tensor, b: Tensor) -> int:
    """Multiplications of a non-zero entry of ``a`` by a non-zero entry of ``b`` that the bilinear op
    ``packet`` (conv, mm, addmm, bmm, baddbmm; its geometry from ``args``, the op's own arguments) makes.

    Only the zero patterns of ``a`` and ``b`` matter. mm: Σ_k nnz(a[:, k]) · nnz(b[k, :]) (per batch entry for
    bmm). Convolution: Σ conv(1[a ≠ 0], 1[b ≠ 0]) over every output element with the op's stride, padding,
    dilation, groups (and transposition): each output element counts the (input, weight) pairs it sums
    that are both non-zero; zero padding is an input zero. A multiply-add is 2 FLOPs on top of this.
    """
    if packet in _CONV_OPS:
        ones = aten.convolution.default(
            (a != 0).to(torch.float32), (b != 0).to(torch.float32), None, *args[3:9]
        )  # exact integers (≤ C_in·k_h·k_w each); rounding undoes an FFT or Winograd kernel's error
        return int(torch.round(ones).sum(dtype=torch.float64).item())
    a_nz, b_nz = (a != 0), (b != 0)
    rows = a_nz.sum(dim=-2, dtype=torch.int64)  # per k: non-zeros of a's column k
    cols = b_nz.sum(dim=-1, dtype=torch.int64)  # per k: non-zeros of b's row k
    return int((rows * cols).sum().item())


@dataclass
class _Recorded:
    """A bilinear op of the base's backbone pass: the operands a sub-task's same op is compared with."""

    packet: Any
    a: Tensor
    b: Tensor
    bias: Tensor | None


@dataclass
class DataCount:
    """A data-dependent count summed over ``images`` (mtlprune.engine.costs.count_flops_input_sparse).

    ``activations[component]``: [non-zeros, entries] of the activation operands of its bilinear ops;
    ``deltas[task]``: [non-zeros, entries] of δ = (sub-task − base) of the activation operands of the
    sub-task pass's bilinear ops, and ``delta_layers[task][layer]`` the same per op (layer = the innermost
    backbone module that ran it, ``#n`` for its n-th op); ``forms[task]``: [delta form, direct form] op
    counts chosen.
    """

    breakdown: FlopBreakdown
    images: int = 0
    activations: dict[str, list[int]] = field(default_factory=dict)
    deltas: dict[str, list[int]] = field(default_factory=dict)
    delta_layers: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    forms: dict[str, list[int]] = field(default_factory=dict)


def _tally(table: dict[str, list[int]], key: str, nnz: int, numel: int) -> None:
    row = table.setdefault(key, [0, 0])
    row[0] += nnz
    row[1] += numel


class _DataCounter(_Counter):
    """A real forward in which each bilinear op is charged by the non-zero products it needs.

    Every op that is not bilinear is charged by the static formulas (`_Counter._charge`). A bilinear op
    y = f(a, b) costs 2 · nonzero_products(a, b) (+ its bias). On a `DeltaSharedMTL`, which tells this
    counter (its ``observer``) where each task's backbone pass and each thresholding starts, the base pass's
    bilinear operands are kept, and the k-th bilinear op of a sub-task pass, f(a_s, b_s), is compared with
    the base's k-th, f(a_b, b_b): given y_b, y_s = y_b + f(a_s − a_b, b_b) + f(a_s, b_s − b_b), so the
    *delta form* costs 2 · [products(δa, b_b) + products(a_s, δb)] + 1 per output element (y_b + c) + the
    bias delta's non-zeros times their positions, and the *direct form* costs what it costs in any model;
    the cheaper is charged (a tie: direct). A thresholding at a sharing point costs
    THRESHOLD_FLOPS_PER_ELEMENT per element, + 1 (δ = y_s − y_b) when its op was computed directly; the
    ops that simulate it are not charged otherwise.
    """

    def __init__(self, count: DataCount, base_task: str | None = None) -> None:
        super().__init__(count.breakdown, to_meta=False)
        self.count = count
        self.base_task = base_task
        self.pass_task: str | None = None
        self.base_ops: list[_Recorded] = []
        self.op_index = 0
        self.sharing = 0
        self.last_direct = True
        self.modules: list[str] = []
        self.layer_calls: dict[str, int] = {}

    # the DeltaSharedMTL observer protocol (mtlprune.engine.models.delta.ForwardObserver)
    def enter(self, kind: str, name: str, output: Tensor | None) -> None:
        if kind == "pass":
            self.pass_task, self.op_index, self.layer_calls = name, 0, {}
            if name == self.base_task:
                self.base_ops = []
            self.stack.append(BACKBONE if name == self.base_task else f"delta/{name}")
        elif kind == "share":
            if self.sharing == 0 and output is not None:
                per_element = THRESHOLD_FLOPS_PER_ELEMENT + (1 if self.last_direct else 0)
                self.breakdown.add(self.stack[-1], SHARE, per_element * output.numel())
            self.sharing += 1

    def leave(self, kind: str, name: str) -> None:
        if kind == "pass":
            self.stack.pop()
            if name != self.base_task and self.op_index != len(self.base_ops):
                raise RuntimeError(
                    f"the {name} pass ran {self.op_index} bilinear ops, the base pass {len(self.base_ops)}"
                )
            self.pass_task = None
        elif kind == "share":
            self.sharing -= 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        if not any(self._is_activation(t) for t in flat):
            return func(*args, **kwargs)
        if self.sharing or func.overloadpacket in _BILINEAR_OPS:
            out = func(*args, **kwargs)
            self.mark(out)
            if not self.sharing:  # the thresholding's own ops are charged on entering it
                self._bilinear(func.overloadpacket, args, _first_tensor(out))
            return out
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _layer(self) -> str:
        name = self.modules[-1] if self.modules else "?"
        calls = self.layer_calls[name] = self.layer_calls.get(name, 0) + 1
        return name if calls == 1 else f"{name}#{calls}"

    def _bilinear(self, packet: Any, args: Any, y: Tensor) -> None:
        a, b, bias = _operands(packet, args)
        component = self.stack[-1]
        is_act = (self._is_activation(a), self._is_activation(b))
        direct = 2 * nonzero_products(packet, args, a, b)
        direct_extra = y.numel() if bias is not None else 0
        for t, act in zip((a, b), is_act, strict=True):
            if act:
                _tally(self.count.activations, component, int(torch.count_nonzero(t)), t.numel())
        if self.pass_task is None or component not in (BACKBONE, f"delta/{self.pass_task}"):
            self._charge_form(component, direct, BIAS, direct_extra)
            return
        if self.pass_task == self.base_task:
            keep = [t.detach().clone() if act else t for t, act in zip((a, b), is_act, strict=True)]
            self.base_ops.append(_Recorded(packet, keep[0], keep[1], bias))
            self._charge_form(component, direct, BIAS, direct_extra)
            return
        task = self.pass_task
        if self.op_index >= len(self.base_ops):
            raise RuntimeError(f"the {task} pass runs more bilinear ops than the base pass")
        base = self.base_ops[self.op_index]
        self.op_index += 1
        if base.packet is not packet or base.a.shape != a.shape or base.b.shape != b.shape:
            raise RuntimeError(f"bilinear op {self.op_index} of the {task} pass differs from the base pass's")
        delta_a, delta_b = a != base.a, b != base.b
        layer = self._layer()
        for changed, act in zip((delta_a, delta_b), is_act, strict=True):
            if act:
                nnz = int(changed.sum())
                _tally(self.count.deltas, task, nnz, changed.numel())
                _tally(self.count.delta_layers.setdefault(task, {}), layer, nnz, changed.numel())
        delta = 2 * (
            nonzero_products(packet, args, delta_a, base.b) + nonzero_products(packet, args, a, delta_b)
        )
        delta_extra = y.numel()  # y_b + c (y_b holds the base's bias)
        if bias is not None:
            changed = bias != base.bias
            if packet in _CONV_OPS:
                delta_extra += int(changed.sum()) * (y.numel() // int(y.shape[1]))
            else:
                delta_extra += int(torch.broadcast_to(changed, y.shape).sum())
        forms = self.count.forms.setdefault(task, [0, 0])
        self.last_direct = direct + direct_extra <= delta + delta_extra
        if self.last_direct:
            forms[1] += 1
            self._charge_form(component, direct, BIAS, direct_extra)
        else:
            forms[0] += 1
            self._charge_form(component, delta, SHARE, delta_extra)

    def _charge_form(self, component: str, products: int, extra_category: str, extra: int) -> None:
        self.breakdown.add(component, CONV, products)
        if extra:
            self.breakdown.add(component, extra_category, extra)


def _track_modules(module: nn.Module, counter: _DataCounter) -> list[Any]:
    """Pre/post hooks that keep the name of the innermost running submodule on ``counter.modules``."""

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counter.modules.append(name)

        return hook

    def leave(*_: Any) -> None:
        counter.modules.pop()

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(enter(name or "backbone")))
        handles.append(sub.register_forward_hook(leave, always_call=True))
    return handles


def data_breakdown(
    model: MTLModel, batches: Iterable[Tensor], output_hw: tuple[int, int] | None = None
) -> DataCount:
    """The data-dependent count of every image of ``batches`` (each split into single images, so the count
    does not depend on the batching), summed; see `count_flops_input_sparse`. Eval mode, no gradients; the
    model and its flags are left as they were."""
    count = DataCount(FlopBreakdown())
    for component in model.components():
        count.breakdown.add(component, CONV, 0)
    delta = isinstance(model, DeltaSharedMTL)
    counter = _DataCounter(count, model.base_task if delta else None)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    target = None if output_hw is None else torch.empty((1, *output_hw), device="meta")
    handles = _track_heads(model, counter) + _track_modules(model.backbone, counter)
    active = model.active_tasks if delta else None
    try:
        if delta:
            model.observer, model.active_tasks = counter, None
        with _eval_mode(model), torch.no_grad():
            for batch in batches:
                for i in range(int(batch.shape[0])):
                    x = batch[i : i + 1].to(device=device, dtype=dtype)
                    with counter:
                        counter.mark(x)
                        outputs = model(x)
                        if target is not None:
                            for task in model.tasks:
                                counter.stack.append(f"head/{task}")
                                upsample_to(outputs[task], target)
                                counter.stack.pop()
                    count.images += 1
    finally:
        for handle in handles:
            handle.remove()
        if delta:
            model.observer, model.active_tasks = None, active
    uncounted = count.breakdown.uncounted
    if uncounted:
        warnings.warn(
            f"FLOPs not counted for ops with no formula in mtlprune.engine.costs: {uncounted}", stacklevel=2
        )
    if count.images == 0:
        raise ValueError("no images to count the data-dependent FLOPs on")
    return count


def _density(row: list[int] | None) -> float:
    return float("nan") if not row or row[1] == 0 else row[0] / row[1]


def count_flops_input_sparse(
    model: MTLModel, batches: Iterable[Tensor], output_hw: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Data-dependent FLOPs per image, the mean over the images of ``batches``: every bilinear op (conv,
    linear, matmul) costs 2 FLOPs per product of a non-zero input entry with a non-zero weight
    (`nonzero_products`: zero activations — after a ReLU, or zero padding — and pruned weights both cost
    nothing), every other op the static formulas' cost (module docstring), the heads' upsampling to
    ``output_hw`` included.

    Columns: ``flops_input_sparse`` (the whole multi-task forward), ``.backbone``, ``.head.<task>``,
    ``.path.<task>`` (backbone + head), ``act_density`` (non-zero share of the activation operands of every
    bilinear op), ``input_sparse_images``. A `DeltaSharedMTL` is counted by `count_flops_shared`, whose
    columns these are too (its ``flops_input_sparse*`` = ``flops_shared*``).
    """
    if isinstance(model, DeltaSharedMTL):
        return count_flops_shared(model, batches, output_hw)
    count = data_breakdown(model, batches, output_hw)
    n = count.images
    parts = {c: count.breakdown.total("dense", [c]) / n for c in model.components()}
    out: dict[str, Any] = {"flops_input_sparse": sum(parts.values())}
    out["flops_input_sparse.backbone"] = parts[BACKBONE]
    for task in model.tasks:
        out[f"flops_input_sparse.head.{task}"] = parts[f"head/{task}"]
    for task in model.tasks:
        out[f"flops_input_sparse.path.{task}"] = parts[BACKBONE] + parts[f"head/{task}"]
    out["act_density"] = _density(_sum_rows(count.activations.values()))
    out["input_sparse_images"] = n
    return out


def _sum_rows(rows: Iterable[list[int]]) -> list[int]:
    total = [0, 0]
    for row in rows:
        total[0] += row[0]
        total[1] += row[1]
    return total


def count_flops_shared(
    model: MTLModel, batches: Iterable[Tensor], output_hw: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Data-dependent FLOPs per image of a delta-shared model (ECS) with its activation sharing, the mean over
    the images of ``batches`` (`_DataCounter`; docs/accounting.md derives the rule).

    ``flops_shared``: the joint task set — the base's backbone pass once, each sub-task's pass given the
    base's (``flops_shared.delta.<task>``: each bilinear op in the cheaper of the direct and the delta form,
    every other op at full cost, the thresholding), and every head; ``flops_shared.backbone`` the base pass,
    ``flops_shared.head.<task>``, ``flops_shared.path.<task>`` one task alone (base pass + its delta pass +
    its head). ``act_delta_density.<task>``: the non-zero share of δ = a_sub − a_base over the activation
    operands of the sub-task pass's bilinear ops (per op in ``act_delta_density_layers``, a nested entry),
    ``act_density`` that of the activation operands themselves. The same numbers are also given as
    ``flops_input_sparse``, ``.backbone``, ``.head.<task>``, ``.path.<task>``: the column every model has.
    """
    if not isinstance(model, DeltaSharedMTL):
        raise TypeError(f"count_flops_shared counts a DeltaSharedMTL, not a {type(model).__name__}")
    count = data_breakdown(model, batches, output_hw)
    n = count.images
    parts = {c: count.breakdown.total("dense", [c]) / n for c in model.components()}
    subs = model.sub_tasks
    joint = parts[BACKBONE] + sum(parts[f"delta/{t}"] for t in subs)
    joint += sum(parts[f"head/{t}"] for t in model.tasks)
    paths = {
        t: parts[BACKBONE] + (parts[f"delta/{t}"] if t in subs else 0) + parts[f"head/{t}"]
        for t in model.tasks
    }
    out: dict[str, Any] = {"flops_shared": joint, "flops_shared.backbone": parts[BACKBONE]}
    out.update({f"flops_shared.delta.{t}": parts[f"delta/{t}"] for t in subs})
    out.update({f"flops_shared.head.{t}": parts[f"head/{t}"] for t in model.tasks})
    out.update({f"flops_shared.path.{t}": paths[t] for t in model.tasks})
    out.update({f"act_delta_density.{t}": _density(count.deltas.get(t)) for t in subs})
    out["act_density"] = _density(_sum_rows(count.activations.values()))
    out["input_sparse_images"] = n
    out["flops_input_sparse"] = joint
    out["flops_input_sparse.backbone"] = parts[BACKBONE]
    out.update({f"flops_input_sparse.head.{t}": parts[f"head/{t}"] for t in model.tasks})
    out.update({f"flops_input_sparse.path.{t}": paths[t] for t in model.tasks})
    out["act_delta_density_layers"] = {
        t: {layer: _density(row) for layer, row in count.delta_layers.get(t, {}).items()} for t in subs
    }
    out["shared_forms"] = {t: {"delta": f[0] / n, "direct": f[1] / n} for t, f in count.forms.items()}
    return out
