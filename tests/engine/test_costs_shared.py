"""Data-dependent FLOP counts (mtlprune.engine.costs: count_flops_input_sparse, count_flops_shared): the
non-zero-product rule of a bilinear op against brute force, hand-counted toys (a 2-layer Linear model and a
conv model with a fixed activation-delta pattern), the limits δ = 0 and τ = 0, the tiny ViT and ResNet,
and the columns measure_costs writes (docs/accounting.md, "Data-dependent FLOPs")."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtlprune.engine.costs import (
    BIAS,
    CONV,
    SHARE,
    count_flops,
    count_flops_input_sparse,
    count_flops_shared,
    data_breakdown,
    nonzero_products,
)
from mtlprune.engine.lifecycle import delta_flops, measure_costs
from mtlprune.engine.models.delta import DeltaSharedMTL
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.registry import ARCHS
from mtlprune.spec import RuntimeSpec

aten = torch.ops.aten
TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
ARCH_SETTINGS = {
    "vit_t_convnext": {"width": 0.25, "head_width": 0.03125},
    "deeplab_resnet34": {"width": 0.125, "head_width": 0.03125},
}


# ------------------------------------------------------------------------------- the product rule


def _brute_conv(x, w, stride, padding, dilation, groups) -> int:
    """Σ over outputs of the (input, weight) pairs that are both non-zero, by explicit loops."""
    h, wd = x.shape[-2:]
    c_out, c_in_g, kh, kw = w.shape
    out_h = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    total = 0
    for co, oh, ow, ci, i, j in itertools.product(
        range(c_out), range(out_h), range(out_w), range(c_in_g), range(kh), range(kw)
    ):
        group = co // (c_out // groups)
        ih, iw = oh * stride - padding + i * dilation, ow * stride - padding + j * dilation
        if 0 <= ih < h and 0 <= iw < wd and x[0, group * c_in_g + ci, ih, iw] != 0 and w[co, ci, i, j] != 0:
            total += 1
    return total


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"), [(1, 0, 1, 1), (1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)]
)
def test_conv_products_count_non_zero_pairs_with_padding_as_zeros(stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 5, generator=gen) * (torch.rand(1, 4, 6, 5, generator=gen) < 0.4)
    w = torch.randn(6, 4 // groups, 3, 3, generator=gen) * (
        torch.rand(6, 4 // groups, 3, 3, generator=gen) < 0.5
    )
    args = (x, w, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)
    assert nonzero_products(aten.convolution, args, x, w) == _brute_conv(
        x, w, stride, padding, dilation, groups
    )


def test_matmul_products_count_non_zero_pairs():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 7, generator=gen) * (torch.rand(2, 5, 7, generator=gen) < 0.5)
    b = torch.randn(2, 7, 3, generator=gen) * (torch.rand(2, 7, 3, generator=gen) < 0.5)
    brute = int(((a != 0).float() @ (b != 0).float()).sum())
    assert nonzero_products(aten.bmm, (a, b), a, b) == brute
    assert nonzero_products(aten.mm, (a[0], b[0]), a[0], b[0]) == int(
        ((a[0] != 0).float() @ (b[0] != 0).float()).sum()
    )
    # dense operands: the dense count m·k·n
    assert nonzero_products(aten.mm, None, torch.ones(5, 7), torch.ones(7, 3)) == 5 * 7 * 3


# -------------------------------------------------------------------- a hand-counted Linear toy


def _linear_toy() -> DeltaSharedMTL:
    """Backbone Linear(4→3) → ReLU → Linear(3→4), no biases; heads Linear(4→1) of ones; base task `a`.

    Base: W1 rows (1,1,1,1), (−1,−1,−1,−1), (2,1,1,1); W2 rows (1,1,1), (1,−1,2), (.5,1,1), (1,1,−1).
    Sub-task `b`: ΔW1 = +1 at (0, 1) and +5 at (2, 2); ΔW2 = +.5 at (1, 0).
    """
    backbone = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 4, bias=False))
    heads = {t: nn.Linear(4, 1, bias=False) for t in ("a", "b")}
    model = DeltaSharedMTL(backbone, heads, "a").eval()
    with torch.no_grad():
        backbone[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1], [2, 1, 1, 1]]))
        backbone[2].weight.copy_(torch.tensor([[1.0, 1, 1], [1, -1, 2], [0.5, 1, 1], [1, 1, -1]]))
        for head in heads.values():
            head.weight.fill_(1.0)
        delta = model.delta("b")
        delta["0.weight"][0, 1] = 1.0
        delta["0.weight"][2, 2] = 5.0
        delta["2.weight"][1, 0] = 0.5
    return model


X = torch.tensor([[1.0, 2.0, 0.0, 3.0]])  # one image, one zero entry


def test_the_linear_toy_by_hand_input_sparse_base():
    """A plain model (the toy's base) counts non-zero products: x has 3 non-zeros, ReLU(W1 x) = (6, 0, 7)."""
    toy = _linear_toy()
    plain = MTLModel(toy.backbone, {"a": toy.heads["a"]})
    got = count_flops_input_sparse(plain, [X])
    # L1: 3 non-zeros of x × 3 outputs = 9 MACs = 18; ReLU 3; L2: 2 non-zeros × 4 outputs = 8 MACs = 16
    assert got["flops_input_sparse.backbone"] == 18 + 3 + 16
    # head: z = W2 h = (13, 20, 10, −1), all non-zero: 4 MACs = 8
    assert got["flops_input_sparse.head.a"] == 8
    assert got["flops_input_sparse"] == got["flops_input_sparse.path.a"] == 37 + 8
    assert got["act_density"] == pytest.approx((3 + 2 + 4) / (4 + 3 + 4))


@pytest.mark.parametrize(
    ("thresholds", "sub_conv", "sub_share", "density"),
    [
        # τ = (1, 0): L1 in the delta form (δx = 0: x·ΔW1 meets one non-zero x entry, 1 MAC = 2), its
        # output y_b + c (3) and the thresholding of 3 entries (2 each: 6); δ = (2, 0, 0) survives τ = 1, so
        # ReLU's output differs in one entry: L2 delta form = δh·W2_b (1 × 4 outputs) + h_s·ΔW2 (h_s[0] ≠ 0:
        # 1) = 5 MACs = 10 and y_b + c (4), cheaper than the direct 2 non-zeros × 4 = 16
        ((1.0, 0.0), 2 + 10, 3 + 6 + 4, 1 / 7),
        # τ = (3, 0): δ = (2, 0, 0) is below 3 and shared: L2's input delta is 0, only h·ΔW2 (1 MAC = 2)
        ((3.0, 0.0), 2 + 2, 3 + 6 + 4, 0.0),
        # τ = 0 (no sharing, ecs-weights): as the first row without the thresholding
        ((0.0, 0.0), 2 + 10, 3 + 4, 1 / 7),
        # τ = (1, 1): the thresholding of L2's 4 outputs too (2 each: 8), its op in the delta form
        ((1.0, 1.0), 2 + 10, 3 + 6 + 4 + 8, 1 / 7),
    ],
)
def test_the_linear_toy_by_hand_shared(thresholds, sub_conv, sub_share, density):
    model = _linear_toy()
    model.set_thresholds(list(thresholds))
    count = data_breakdown(model, [X])
    table = count.breakdown.dense
    assert table["backbone"] == {CONV: 18 + 16, "activation": 3}  # the base pass, as the plain count
    assert table["delta/b"][CONV] == sub_conv
    assert table["delta/b"][SHARE] == sub_share
    assert table["delta/b"]["activation"] == 3  # ReLU at full cost
    assert BIAS not in table["delta/b"]
    got = count_flops_shared(model, [X])
    delta = sub_conv + sub_share + 3
    assert got["flops_shared.delta.b"] == delta
    assert got["flops_shared.backbone"] == 37
    assert got["flops_shared.head.a"] == got["flops_shared.head.b"] == 8  # z_s has no zeros either
    assert got["flops_shared.path.a"] == 37 + 8
    assert got["flops_shared.path.b"] == 37 + delta + 8
    assert got["flops_shared"] == 37 + delta + 8 + 8
    assert got["act_delta_density.b"] == pytest.approx(density)  # δ of x (4 entries) and of h (3)
    assert got["flops_input_sparse"] == got["flops_shared"]
    assert got["flops_input_sparse.path.b"] == got["flops_shared.path.b"]


def test_a_dense_weight_delta_runs_directly_and_its_sharing_point_pays_for_forming_the_delta():
    """ΔW1 = 1 everywhere: L1's delta form (x·ΔW1: 9 MACs = 18, + 3 adds) loses to the direct form, whose
    weight W1_b + ΔW1 has a zero row (−1 + 1): 3 × 2 = 6 MACs = 12; its thresholding forms
    δ = y_s − y_b first: 3 per element on 3 outputs. y1 = (12, 0, 13) against (6, −6, 7):
    δ = 6 everywhere, kept at τ = 1; ReLU gives (12, 0, 13) against (6, 0, 7), so L2's input delta has 2
    non-zeros (both ReLU zeros are equal): delta form 2 × 4 + 1 = 9 MACs (+ 4 adds) loses to the direct
    2 × 4 = 8 MACs."""
    model = _linear_toy()
    with torch.no_grad():
        model.delta("b")["0.weight"].fill_(1.0)
    model.set_thresholds([1.0, 0.0])
    count = data_breakdown(model, [X])
    assert count.breakdown.dense["delta/b"] == {CONV: 12 + 16, SHARE: 3 * 3, "activation": 3}
    assert count.forms["b"] == [0, 2]  # [delta form, direct form]
    assert count_flops_shared(model, [X])["act_delta_density.b"] == pytest.approx(2 / 7)


def test_the_mean_over_images_and_batches_is_per_image():
    model = _linear_toy()
    model.set_thresholds([1.0, 0.0])
    one = count_flops_shared(model, [X])
    other = count_flops_shared(model, [torch.tensor([[1.0, 0.0, 0.0, 0.0]])])
    both = count_flops_shared(model, [torch.cat([X, torch.tensor([[1.0, 0.0, 0.0, 0.0]])])])
    assert both["input_sparse_images"] == 2
    for key in ("flops_shared", "flops_shared.delta.b", "flops_shared.path.a"):
        assert both[key] == (one[key] + other[key]) / 2
    assert count_flops_shared(model, [X, X]) == {**one, "input_sparse_images": 2}


# ---------------------------------------------------------------------- a hand-counted conv toy


def _conv_toy() -> tuple[DeltaSharedMTL, torch.Tensor]:
    """Backbone conv 1×1 (1→3) of ones → conv 3×3 (3→2, padding 1) of ones, no biases, on a 4×4 image that
    is 5 at (0,0), (1,2), (3,3) and 0.1 elsewhere; heads 1×1 (2→1) of ones. Sub-task `b`: ΔW1 = +1 on output
    channel 0, ΔW2 = +.5 at (out 1, in 2, centre tap). At τ = (1, 0) the δ of conv1's output is x on channel
    0, of which the three 5s survive: conv2's input delta is those three pixels of channel 0."""
    backbone = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.Conv2d(3, 2, 3, padding=1, bias=False))
    heads = {t: nn.Conv2d(2, 1, 1, bias=False) for t in ("a", "b")}
    model = DeltaSharedMTL(backbone, heads, "a").eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.fill_(1.0)
        for head in heads.values():
            head.weight.fill_(1.0)
        model.delta("b")["0.weight"][0] = 1.0
        model.delta("b")["1.weight"][1, 2, 1, 1] = 0.5
    x = torch.full((1, 1, 4, 4), 0.1)
    for i, j in ((0, 0), (1, 2), (3, 3)):
        x[0, 0, i, j] = 5.0
    return model, x


def test_the_conv_toy_by_hand():
    model, x = _conv_toy()
    model.set_thresholds([1.0, 0.0])
    table = data_breakdown(model, [x]).breakdown.dense
    # valid taps of a 3×3 kernel with padding 1 at row (or column) i of a 4-pixel side: r = (2, 3, 3, 2)
    r = (2, 3, 3, 2)
    valid = sum(r) ** 2  # 100 input-output pairs per (input channel, output channel), not 16 × 9
    # base: conv1 16 pixels × 3 outputs = 48 MACs; conv2 3 input channels × 100 × 2 outputs = 600 MACs
    assert table["backbone"] == {CONV: 2 * (16 * 3 + 3 * valid * 2)} == {CONV: 2 * (48 + 600)}
    # sub-task: conv1 in the delta form: x·ΔW1 = 16 MACs (direct: 48), y_b + c on 48 outputs,
    # thresholding 48 entries at 2 each; conv2 in the delta form: δ at (0,0), (1,2), (3,3) of channel 0
    # reaches r_i·r_j outputs per output channel: (4 + 9 + 4) × 2 = 34, and ΔW2's centre tap meets the 16
    # non-zero pixels of input channel 2: 16; y_b + c on 32 outputs
    assert table["delta/b"] == {CONV: 2 * 16 + 2 * (34 + 16), SHARE: 48 + 2 * 48 + 32}
    got = count_flops_shared(model, [x])
    assert got["flops_shared.head.a"] == got["flops_shared.head.b"] == 2 * 32  # positive features: dense
    assert got["act_delta_density.b"] == pytest.approx(3 / (16 + 48))
    assert got["flops_shared.delta.b"] == 32 + 100 + 48 + 96 + 32
    layers = got["act_delta_density_layers"]["b"]
    assert layers == {"0": 0.0, "1": pytest.approx(3 / 48)}


def test_the_conv_toy_without_sharing_counts_the_whole_delta_of_conv1():
    """τ = 0: conv1's δ is x on channel 0, all 16 pixels; conv2 in the delta form: Σ r_i·r_j = 100 per output
    channel, + 16 from ΔW2: 216 MACs, still cheaper than direct (600); no thresholding."""
    model, x = _conv_toy()
    model.set_thresholds(0.0)
    table = data_breakdown(model, [x]).breakdown.dense
    assert table["delta/b"] == {CONV: 2 * 16 + 2 * (200 + 16), SHARE: 48 + 32}


# ------------------------------------------------------------------------ the limits δ = 0, τ = 0


def _model(arch: str, density: float | None, seed: int = 0) -> DeltaSharedMTL:
    torch.manual_seed(seed)
    mtl = ARCHS.get(arch)(TASKS, **ARCH_SETTINGS[arch])
    model = DeltaSharedMTL(mtl.backbone, dict(mtl.heads), "segment_semantic").eval()
    if density is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for task in model.sub_tasks:
                for d in model.delta(task).values():
                    keep = torch.rand(d.shape, generator=gen) < density
                    d.copy_((torch.randn(d.shape, generator=gen) * 0.05 + 0.1) * keep)
    return model


def _images(n: int = 2, seed: int = 2) -> list[torch.Tensor]:
    return [torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
@pytest.mark.parametrize("tau", [0.0, 0.15])
def test_a_zero_delta_costs_the_sub_tasks_no_bilinear_flops(arch, tau):
    model = _model(arch, density=None)
    model.set_thresholds(tau)
    count = data_breakdown(model, _images(), (32, 32))
    for task in model.sub_tasks:
        assert count.breakdown.dense[f"delta/{task}"][CONV] == 0
        assert count.deltas[task][0] == 0
    got = count_flops_shared(model, _images(), (32, 32))
    for task in model.sub_tasks:
        assert got[f"act_delta_density.{task}"] == 0.0
        # everything but the bilinear ops is paid again (norms, activations, adds, the thresholding)
        assert 0 < got[f"flops_shared.delta.{task}"] < 0.1 * got["flops_shared.backbone"]
    assert not count.breakdown.uncounted


def test_no_sharing_and_a_dense_delta_cost_a_full_dense_path_on_the_vit():
    """τ = 0 and every delta entry non-zero: every op's input delta is dense, so every bilinear op runs
    directly and a sub-task's pass costs exactly its own backbone pass (the ViT backbone has no zero
    activations and no padding, so that is the static dense count too)."""
    model = _model("vit_t_convnext", density=1.0)
    model.set_thresholds(0.0)
    got = count_flops_shared(model, _images(1), (32, 32))
    static = delta_flops(model, (32, 32), (32, 32))
    for task in model.sub_tasks:
        own = count_flops_input_sparse(model.standalone(task), _images(1), (32, 32))
        assert got[f"flops_shared.delta.{task}"] == own["flops_input_sparse.backbone"]
        assert got[f"flops_shared.delta.{task}"] == static[f"flops_dense.delta.{task}"]
        assert got["shared_forms"][task]["delta"] == 0
    assert got["flops_shared.backbone"] == static["flops_dense.backbone"]


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_sharing_saves_on_a_sparse_delta_and_a_plain_model_counts_its_own_zeros(arch):
    model = _model(arch, density=0.05)
    model.set_thresholds(0.0)
    unshared = count_flops_shared(model, _images(), (32, 32))
    model.set_thresholds(0.5)
    shared = count_flops_shared(model, _images(), (32, 32))
    for task in model.sub_tasks:
        assert shared[f"act_delta_density.{task}"] < unshared[f"act_delta_density.{task}"]
        assert shared[f"flops_shared.delta.{task}"] < unshared[f"flops_shared.delta.{task}"]
    # the base pass and heads are counted by the same rule as any model's
    plain = MTLModel(model.backbone, {model.base_task: model.heads[model.base_task]})
    alone = count_flops_input_sparse(plain, _images(), (32, 32))
    assert shared["flops_shared.backbone"] == alone["flops_input_sparse.backbone"]
    assert shared["flops_shared.path.segment_semantic"] == alone["flops_input_sparse.path.segment_semantic"]
    static = count_flops(plain, (32, 32), (32, 32))
    assert alone["flops_input_sparse"] <= static["flops_sparse"]
    if arch == "deeplab_resnet34":  # ReLU zeros and padding: well below the static count
        assert alone["act_density"] < 0.9
        assert alone["flops_input_sparse.backbone"] < 0.9 * static["flops_sparse.backbone"]


def test_counting_leaves_the_model_as_it_was():
    model = _model("vit_t_convnext", density=0.3).train()
    model.set_thresholds(0.15)
    model.active_tasks = ("normal",)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops_shared(model, _images(), (32, 32))
    assert model.training and not model.backbone.training
    assert model.active_tasks == ("normal",) and model.observer is None
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# ------------------------------------------------------------------------------- measure_costs


def _test_set(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        {"input": torch.randn(3, 32, 32, generator=gen), **{t: torch.zeros(32, 32) for t in TASKS}}
        for _ in range(n)
    ]


def test_measure_costs_gives_every_model_the_input_sparse_count_and_ecs_its_shared_count():
    runtime = RuntimeSpec(device="cpu")
    model = _model("deeplab_resnet34", density=0.05)
    model.set_thresholds(0.15)
    dense = SimpleNamespace(costs={"flops_input_sparse": 123.0}, latency=None)  # a DenseResult's fields
    costs = measure_costs(model, _test_set(6), runtime, torch.device("cpu"), dense_result=dense)["costs"]
    assert costs["input_sparse_images"] == 4  # the first INPUT_SPARSE_IMAGES test images
    assert costs["dense_flops_input_sparse"] == 123.0  # the dense stage's, the reference on this axis
    images = [torch.stack([s["input"] for s in _test_set(4)])]
    assert costs["flops_shared"] == count_flops_shared(model, images, (32, 32))["flops_shared"]
    assert costs["flops_input_sparse"] == costs["flops_shared"]
    assert costs["flops_sparse"] == delta_flops(model, (32, 32), (32, 32))["flops_sparse"]  # static joint
    assert {f"act_delta_density.{t}" for t in model.sub_tasks} <= costs.keys()
    plain = ARCHS.get("deeplab_resnet34")(TASKS, **ARCH_SETTINGS["deeplab_resnet34"])
    costs = measure_costs(plain, _test_set(2), runtime, torch.device("cpu"))["costs"]
    assert costs["input_sparse_images"] == 2
    assert "flops_shared" not in costs and "dense_flops_input_sparse" not in costs
    assert math.isfinite(costs["flops_input_sparse"]) and 0 < costs["act_density"] < 1


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # trains a dense stage, the single-task base and two cells
def test_every_row_gets_the_input_sparse_count_and_an_ecs_row_its_shared_count(tmp_path):
    from mtlprune.analysis import load_results
    from mtlprune.engine.build import build_model, build_splits
    from mtlprune.execution.matrix import run_matrix
    from mtlprune.store import Store
    from tests.helpers import tiny_matrix

    matrix = tiny_matrix(
        methods=[{"name": "ecs"}, {"name": "magnitude"}],
        sparsities=[0.8],
        archs=[{"name": "vit_t_convnext", **ARCH_SETTINGS["vit_t_convnext"]}],
        finetune={"steps": 2, "batch_size": 4},
        runtime={"device": "cpu", "save_cell_models": True},
    )
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    frame = load_results(store.root).set_index("method_name")
    ecs, magnitude = frame.loc["ecs"], frame.loc["magnitude"]
    subs = ("normal", "depth_zbuffer")
    tasks = ("segment_semantic", *subs)
    assert ecs["flops_input_sparse"] == ecs["flops_shared"]
    assert ecs["flops_shared"] == pytest.approx(
        ecs["flops_shared.backbone"]
        + sum(ecs[f"flops_shared.delta.{t}"] for t in subs)
        + sum(ecs[f"flops_shared.head.{t}"] for t in tasks)
    )
    for task in subs:
        assert 0 <= ecs[f"act_delta_density.{task}"] <= 1
    assert ecs["flops_sparse"] > 0  # the static joint count without sharing
    assert magnitude["flops_input_sparse"] > 0 and magnitude["input_sparse_images"] == 4
    assert magnitude["flops_shared"] != magnitude["flops_shared"]  # NaN: not a delta-shared model
    dense = store.result(magnitude["dense_run_id"])
    assert dense.costs["flops_input_sparse"] > 0  # the dense reference on the data-dependent axis
    assert magnitude["dense_flops_input_sparse"] == ecs["dense_flops_input_sparse"]
    assert magnitude["dense_flops_input_sparse"] == dense.costs["flops_input_sparse"]
    # the row's count is the count of the stored model on the first four test images
    cell = {c.method.name: c for c in matrix.expand()}["ecs"]  # a RunSpec
    result = store.result(cell.run_id)
    mtl = build_model(cell)
    model = DeltaSharedMTL(mtl.backbone, dict(mtl.heads), result.method_state["base_task"])
    model.load_state_dict(torch.load(store.run_dir(cell.run_id) / "model.pt", weights_only=True))
    model.set_thresholds(0.15)
    test_set = build_splits(cell, store)[2]
    images = [test_set[i]["input"].unsqueeze(0) for i in range(4)]
    again = count_flops_shared(model, images, tuple(test_set[0]["segment_semantic"].shape[-2:]))
    assert again["flops_shared"] == pytest.approx(ecs["flops_shared"], rel=1e-4)
