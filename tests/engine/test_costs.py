"""FLOP counting (mtlprune.engine.costs): hand-computed golden cases, agreement with FlopCounterMode,
sparsity."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from mtlprune.engine.costs import (
    ACTIVATION,
    BIAS,
    CONV,
    ELEMENTWISE,
    NORM,
    POOL,
    UPSAMPLE,
    _eval_mode,
    count_flops,
    flop_breakdown,
    measure_latency,
)
from mtlprune.engine.models.aspp import ASPPHead
from mtlprune.engine.models.mobilenetv2 import mobilenetv2
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.models.resnet import deeplab_resnet34
from mtlprune.engine.sparsity import apply_masks, select_masks
from mtlprune.engine.tasks import upsample_to
from mtlprune.registry import ARCHS

TASKS = {"segment_semantic": 13, "normal": 3, "depth_zbuffer": 1}


ARCH_FACTORIES: dict[str, Callable[..., MTLModel]] = {
    "deeplab_resnet34": deeplab_resnet34,
    "mobilenetv2": mobilenetv2,
}


# --- golden cases --------------------------------------------------------------------------------------
def _tiny() -> MTLModel:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    heads = {"a": nn.Conv2d(4, 2, 1), "b": nn.Conv2d(4, 1, 1)}
    return MTLModel(backbone, heads)


# Input 8×8 → 64 positions everywhere (padding keeps the size); labels 16×16 → 256 positions.
# backbone: conv 2·64·(3·3·3)·4 = 13824; BN 2·(4·64) = 512; ReLU 4·64 = 256          → 14592
# head a:   conv 2·64·4·2 = 1024; bias 2·64 = 128; upsampling 7·(2·256) = 3584       → 4736
# head b:   conv 2·64·4·1 = 512;  bias 1·64 = 64;  upsampling 7·(1·256) = 1792       → 2368
TINY_DENSE = {
    "flops_dense": 14592 + 4736 + 2368,
    "flops_dense.backbone": 14592,
    "flops_dense.head.a": 4736,
    "flops_dense.head.b": 2368,
    "flops_dense.path.a": 14592 + 4736,
    "flops_dense.path.b": 14592 + 2368,
}


def test_golden_tiny_dense_and_sparse() -> None:
    model = _tiny()
    with torch.no_grad():
        model.backbone[0].weight[0].zero_()  # output channel 0: 27 of 108 weights
        model.heads["a"].weight[0, :3].zero_()  # 3 of 8 weights
        model.heads["a"].bias.zero_()  # a zero bias still costs its add
    flops = count_flops(model, (8, 8), (16, 16))
    assert {k: v for k, v in flops.items() if k.startswith("flops_dense")} == TINY_DENSE
    # sparse: backbone conv 2·64·81 = 10368 (−3456); head a conv 2·64·5 = 640 (−384); the rest unchanged
    assert flops["flops_sparse.backbone"] == 14592 - 3456
    assert flops["flops_sparse.head.a"] == 4736 - 384
    assert flops["flops_sparse.head.b"] == 2368
    assert flops["flops_sparse.path.a"] == 14592 - 3456 + 4736 - 384
    assert flops["flops_sparse.path.b"] == 14592 - 3456 + 2368
    assert flops["flops_sparse"] == 21696 - 3456 - 384
    for task in ("a", "b"):
        for kind in ("dense", "sparse"):
            assert flops[f"flops_{kind}.path.{task}"] == (
                flops[f"flops_{kind}.backbone"] + flops[f"flops_{kind}.head.{task}"]
            )
    assert all(isinstance(v, int) for v in flops.values())


def test_no_upsampling_when_output_is_none_or_same_size() -> None:
    model = _tiny()
    # without upsampling the heads are 1024 + 128 = 1152 and 512 + 64 = 576
    expected = {"flops_dense": 14592 + 1152 + 576, "flops_dense.head.a": 1152, "flops_dense.head.b": 576}
    for output_hw in (None, (8, 8)):
        flops = count_flops(model, (8, 8), output_hw)
        assert {k: flops[k] for k in expected} == expected


def test_counting_leaves_model_untouched() -> None:
    model = _tiny()
    model.train()
    model.heads["b"].eval()  # mixed modes survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, (8, 8), (16, 16))
    assert model.training and model.backbone.training and not model.heads["b"].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats not updated
    assert not model.backbone[0]._forward_pre_hooks and not model.heads["a"]._forward_hooks


def test_dilated_and_depthwise_convs() -> None:
    def single(conv: nn.Conv2d) -> int:
        model = MTLModel(conv, {"t": nn.Identity()})
        return count_flops(model, (8, 8), in_channels=conv.in_channels)["flops_dense"]

    plain = single(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    dilated = single(nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False))
    assert plain == dilated == 2 * 64 * 3 * 9 * 4
    # depthwise 8 channels: C·9·2 per position = 144 · 64 positions
    assert single(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)) == 8 * 9 * 2 * 64
    model = MTLModel(
        nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)),
        {"t": nn.Identity()},
    )
    # 1×1 stem 2·64·3·8 = 3072; depthwise 2·64·(8·9) = 9216
    assert count_flops(model, (8, 8))["flops_dense"] == 3072 + 9216
    # stride 2 depthwise: 4×4 = 16 output positions
    model.backbone[1].stride = (2, 2)
    assert count_flops(model, (8, 8))["flops_dense"] == 3072 + 2 * 16 * 8 * 9


def test_aspp_head_golden_counts_branch_sum() -> None:
    head = ASPPHead(4, 2, head_width=8 / 1024)  # hidden = 8
    model = MTLModel(nn.Identity(), {"t": head})
    bd = flop_breakdown(model, (8, 8), in_channels=4)
    # per branch at 64 positions: conv1 2·64·(4·9)·8 = 36864, bias 512, ReLU 512;
    # conv2 2·64·8·8 = 8192, bias 512, ReLU 512; conv3 2·64·8·2 = 2048, bias 128; dropout 0  → 49280
    # four branches 197120 + branch sum: 3 adds × (2·64) = 384                              → 197504
    assert bd.dense["head/t"] == {
        CONV: 4 * (36864 + 8192 + 2048),
        BIAS: 4 * (512 + 512 + 128),
        ACTIVATION: 4 * (512 + 512),
        ELEMENTWISE: 384,
    }
    assert count_flops(model, (8, 8), in_channels=4)["flops_dense.head.t"] == 197504


def test_mask_applied_in_forward_is_a_weight() -> None:
    """torch.nn.utils.prune multiplies weight_orig · mask in a pre-hook: free, and its zeros are seen."""
    model = _tiny()
    reference = count_flops(model, (8, 8), (16, 16))
    prune.custom_from_mask(
        model.heads["a"], "weight", torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 1]).view(2, 4, 1, 1)
    )
    flops = count_flops(model, (8, 8), (16, 16))
    assert flops["flops_dense"] == reference["flops_dense"]  # the mask multiply is not charged
    assert flops["flops_sparse.head.a"] == reference["flops_dense.head.a"] - 2 * 64 * 4  # 4 of 8 pruned


def test_falls_back_to_a_real_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """An op with no meta kernel: the count is repeated on the model's own device, with the same result."""
    model = _tiny()
    expected = count_flops(model, (8, 8), (16, 16))
    real_conv = torch.ops.aten.convolution.default

    def conv_without_meta(*args: Any, **kwargs: Any) -> torch.Tensor:
        if args[0].device.type == "meta":
            raise NotImplementedError("no meta kernel")
        return real_conv(*args, **kwargs)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", _conv_through(conv_without_meta))
    assert count_flops(model, (8, 8), (16, 16)) == expected


def _conv_through(op: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return op(x, weight, bias, self.stride, self.padding, self.dilation, False, [0, 0], self.groups)

    return forward


def test_uncounted_op_is_reported() -> None:
    model = MTLModel(nn.Identity(), {"t": nn.Sigmoid()})
    with pytest.warns(UserWarning, match="sigmoid"):
        bd = flop_breakdown(model, (4, 4))
    assert bd.uncounted == {"aten.sigmoid": 1}


# --- agreement with torch.utils.flop_counter.FlopCounterMode ------------------------------------------
def _first_shape(shape: Any) -> Any:
    return shape[0] if isinstance(shape[0], (list, tuple, torch.Size)) else shape


def _per_output(n: int) -> Callable[..., int]:
    return lambda *args, out_shape=None, **kwargs: n * math.prod(_first_shape(out_shape))


def _conv_with_bias(
    x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape=None, **kw
):
    return conv_flop_count(x_shape, w_shape, out_shape, transposed) + (math.prod(out_shape) if bias else 0)


def _addmm_with_bias(bias, a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * a_shape[0] * a_shape[1] * b_shape[1] + math.prod(out_shape)


def _max_pool(x_shape, kernel_size, *args, out_shape=None, **kwargs):
    kh, kw = (kernel_size * 2)[:2] if len(kernel_size) == 1 else kernel_size
    return (kh * kw - 1) * math.prod(_first_shape(out_shape))


aten = torch.ops.aten
# FlopCounterMode counts only conv/matmul multiply-adds; this mapping adds the other ops of these models
# with the conventions of mtlprune.engine.costs, so the two totals compare like with like.
FULL_MAPPING = {
    aten.convolution: _conv_with_bias,
    aten.addmm: _addmm_with_bias,
    # FlopCounterMode decomposes native_batch_norm into this eval-mode op
    aten._native_batch_norm_legit_no_training: lambda x_shape, *a, out_shape=None, **k: (
        2 * math.prod(x_shape)
    ),
    aten.relu_: _per_output(1),
    aten.relu: _per_output(1),
    aten.hardtanh_: _per_output(1),
    aten.hardtanh: _per_output(1),
    aten.add: _per_output(1),
    aten.max_pool2d_with_indices: _max_pool,
    aten.upsample_bilinear2d: _per_output(7),
}


def _flop_counter(model: MTLModel, input_hw, output_hw, mapping=None) -> FlopCounterMode:
    """FlopCounterMode over the same forward + evaluation upsampling."""
    device = next(model.parameters()).device
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        outputs = model(torch.zeros((1, 3, *input_hw), device=device))
        for out in outputs.values():
            upsample_to(out, torch.empty((1, *output_hw), device="meta"))
    return fc


def _build(arch: str, width: float, head_width: float, meta: bool) -> MTLModel:
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return ARCH_FACTORIES[arch](TASKS, width, head_width)
    return ARCH_FACTORIES[arch](TASKS, width, head_width)


SIZES = [pytest.param(0.25, 0.0625, False, id="small-cpu"), pytest.param(1.0, 1.0, True, id="full-meta")]
INPUT_HW, OUTPUT_HW = (64, 80), (128, 160)  # labels at 2× the input


@pytest.mark.parametrize("arch", sorted(ARCH_FACTORIES))
@pytest.mark.parametrize(("width", "head_width", "meta"), SIZES)
def test_agrees_with_flop_counter_mode(arch: str, width: float, head_width: float, meta: bool) -> None:
    model = _build(arch, width, head_width, meta)
    bd = flop_breakdown(model, INPUT_HW, OUTPUT_HW)
    flops = count_flops(model, INPUT_HW, OUTPUT_HW)
    plain = _flop_counter(model, INPUT_HW, OUTPUT_HW)
    # conv/linear multiply-adds: exactly FlopCounterMode's count (which ignores bias), overall and per head
    assert bd.total("dense", categories=[CONV]) == plain.get_total_flops()
    per_module = plain.get_flop_counts()
    for task in TASKS:
        assert bd.total("dense", [f"head/{task}"], [CONV]) == sum(
            per_module[f"MTLModel.heads.{task}"].values()
        )
    assert bd.total("dense", ["backbone"], [CONV]) == sum(per_module["MTLModel.backbone"].values())
    # like with like: FlopCounterMode extended with the same non-conv conventions gives the same total
    full = _flop_counter(model, INPUT_HW, OUTPUT_HW, FULL_MAPPING).get_total_flops()
    assert flops["flops_dense"] == full
    if meta:
        # the published (full) widths: plain FlopCounterMode, which counts conv/linear multiply-adds only, is
        # within 1% of the whole count (BN, activations, adds, bias, pooling, upsampling included). At tiny
        # widths with labels at 2× the input, the upsampling alone can be several % (not asserted there).
        plain_total = plain.get_total_flops()
        assert plain_total <= flops["flops_dense"] <= 1.01 * plain_total


# --- sparsity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(ARCH_FACTORIES))
def test_sparse_conv_flops_count_nonzeros(arch: str) -> None:
    model = _build(arch, 0.25, 0.0625, meta=False)
    params = model.prunable_parameters()
    generator = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=generator) for n, p in params.items()}
    apply_masks(params, select_masks(scores, 0.9))

    positions: dict[
        str, int
    ] = {}  # output positions per conv, recorded independently of mtlprune.engine.costs
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: positions.__setitem__(name, out[0, 0].numel())
        )
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with _eval_mode(model), torch.no_grad():
        model(torch.zeros((1, 3, *INPUT_HW)))
    for h in handles:
        h.remove()
    expected = 2 * sum(
        positions[n.removesuffix(".weight")] * int(p.count_nonzero()) for n, p in params.items()
    )

    bd = flop_breakdown(model, INPUT_HW, OUTPUT_HW)
    flops = count_flops(model, INPUT_HW, OUTPUT_HW)
    assert bd.total("sparse", categories=[CONV]) == expected
    assert expected < 0.2 * bd.total("dense", categories=[CONV])
    non_conv = [BIAS, NORM, ACTIVATION, ELEMENTWISE, POOL, UPSAMPLE]
    assert bd.total("sparse", categories=non_conv) == bd.total("dense", categories=non_conv)
    assert flops["flops_sparse"] <= flops["flops_dense"]
    for key in flops:
        if key.startswith("flops_sparse"):
            assert flops[key] <= flops[key.replace("sparse", "dense")]
    # the shape-only (meta) pass and a real pass on the model's device count the same
    real = flop_breakdown(model, INPUT_HW, OUTPUT_HW, shape_only=False)
    assert (real.dense, real.sparse) == (bd.dense, bd.sparse)


# --- latency ------------------------------------------------------------------------------------------
def test_measure_latency() -> None:
    model = _tiny()
    model.train()
    result = measure_latency(model, (16, 16), batch_size=2, warmup=1, repeats=5)
    assert set(result) == {"latency_ms", "latency_ms_min", "latency_ms_max", "latency_repeats"}
    assert result["latency_repeats"] == 5
    assert 0 < result["latency_ms_min"] <= result["latency_ms"] <= result["latency_ms_max"]
    assert model.training
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (16, 16), repeats=0)


# --- transformers: LayerNorm, GELU, softmax, attention matmuls (the ViT of ECS) ------------------------
class _NormActSoftmax(nn.Module):
    """Three LayerNorms (weight and bias, weight only, none), GELU and softmax over channels-last tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.affine = nn.LayerNorm(dim)
        self.weight_only = nn.LayerNorm(dim, bias=False)
        self.plain = nn.LayerNorm(dim, elementwise_affine=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1)
        y = self.plain(self.weight_only(self.act(self.affine(y))))
        return y.softmax(dim=-1).permute(0, 3, 1, 2)


def test_layer_norm_gelu_softmax_golden() -> None:
    model = MTLModel(nn.Identity(), {"t": _NormActSoftmax(4)})
    bd = flop_breakdown(model, (2, 3), in_channels=4)
    # 4 channels × 2×3 positions = 24 elements per op.
    # LayerNorm: 5 per element to normalise, + 1 for a weight, + 1 for a bias: (7 + 6 + 5) · 24 = 432
    # GELU 5 · 24 = 120; softmax 5 · 24 = 120                                                   → 240
    assert bd.dense["head/t"] == {CONV: 0, NORM: 432, ACTIVATION: 240}
    assert bd.uncounted == {}


def _vit(arch: str, meta: bool) -> MTLModel:
    torch.manual_seed(0)
    kwargs = {"width": 1.0, "head_width": 1.0} if meta else {"width": 0.25, "head_width": 0.03125}
    if meta:
        with torch.device("meta"):
            return ARCHS.get(arch)(TASKS, **kwargs)
    return ARCHS.get(arch)(TASKS, **kwargs)


@pytest.mark.parametrize(
    ("arch", "meta", "input_hw"),
    [("vit_t_convnext", False, (50, 70)), ("vit_b16_convnext", True, (64, 80))],
    ids=["tiny-cpu-resized", "vit-b16-meta"],
)
def test_vit_matmuls_agree_with_flop_counter_mode(arch: str, meta: bool, input_hw) -> None:
    model = _vit(arch, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no op of the ViT or its heads lacks a formula
        bd = flop_breakdown(model, input_hw, OUTPUT_HW)
    assert bd.uncounted == {}
    per_module = _flop_counter(model, input_hw, OUTPUT_HW).get_flop_counts()
    # patch conv, Linear (addmm), attention (bmm), depthwise and 1×1 convs: exactly FlopCounterMode
    assert bd.total("dense", ["backbone"], [CONV]) == sum(per_module["MTLModel.backbone"].values())
    for task in TASKS:
        assert bd.total("dense", [f"head/{task}"], [CONV]) == sum(
            per_module[f"MTLModel.heads.{task}"].values()
        )
    assert {str(op) for op in per_module["MTLModel.backbone"]} >= {
        "aten.bmm",
        "aten.addmm",
        "aten.convolution",
    }
    for category in (NORM, ACTIVATION, BIAS, ELEMENTWISE):
        assert bd.total("dense", ["backbone"], [category]) > 0, category


def test_vit_b16_flops_at_416_by_hand() -> None:
    """ECS's NYU-v2 setting: 416² → 26×26 = 676 patch tokens + 1 global token; D 768, 12 blocks, E 3072."""
    with torch.device("meta"):
        model = ARCHS.get("vit_b16_convnext")({"segment_semantic": 40})
    bd = flop_breakdown(model, (416, 416))
    patches, tokens, dim = 676, 677, 768
    patch_embed = 2 * patches * (3 * 16 * 16) * dim
    linears = 2 * tokens * 12 * dim * dim  # qkv 3D² + proj D² + fc1 4D² + fc2 4D² per token
    attention = 2 * 2 * tokens * tokens * dim  # q kᵀ and (softmax) v over all heads
    backbone = patch_embed + 12 * (linears + attention)
    assert bd.total("dense", ["backbone"], [CONV]) == backbone == 132_694_806_528
    assert f"{backbone / 2e9:.2f}" == "66.35"  # GMACs; the reference notes round it to ≈ 66.4
    c, positions = 3072 // 16, 104 * 104  # 4×4 sub-pixels per token
    head = 2 * patches * dim * 3072 + 2 * (2 * positions * 49 * c + 2 * 2 * positions * 4 * c * c)
    head += 2 * positions * c * 40  # final 1×1 conv to NYU-v2's 40 classes
    assert bd.total("dense", ["head/segment_semantic"], [CONV]) == head
    assert f"{head / 2e9:.1f}" == "8.3"  # GMACs: the notes' ≈ 8.3 for one E = 3072 head


def test_vit_sparse_linear_flops_count_nonzeros() -> None:
    model = _vit("vit_t_convnext", meta=False)
    params = model.prunable_parameters()
    generator = torch.Generator().manual_seed(0)
    apply_masks(
        params, select_masks({n: torch.rand(p.shape, generator=generator) for n, p in params.items()}, 0.8)
    )
    rows: dict[str, int] = {}  # how many times each weight is applied (tokens / positions), seen from outside

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            per_row = module.out_features if isinstance(module, nn.Linear) else out.shape[1] * out.shape[0]
            rows[name] = out.numel() // per_row

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(record(name))
    with _eval_mode(model), torch.no_grad():
        model(torch.zeros(1, 3, *INPUT_HW))
    bd = flop_breakdown(model, INPUT_HW)
    removed = 2 * sum(
        rows[n.removesuffix(".weight")] * (p.numel() - int(p.count_nonzero())) for n, p in params.items()
    )
    assert removed > 0
    # attention's activation × activation matmuls stay dense; every pruned weight saves 2 FLOPs per row
    assert bd.total("sparse", categories=[CONV]) == bd.total("dense", categories=[CONV]) - removed
