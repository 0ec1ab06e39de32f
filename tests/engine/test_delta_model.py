"""The delta-shared model of ECS (mtlprune.engine.models.delta): identities, hard-concrete gates, activation
sharing, storage accounting and static FLOPs, on the tiny ViT and the tiny ResNet (no training)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlprune.engine.lifecycle import delta_flops
from mtlprune.engine.models.delta import (
    DeltaSharedMTL,
    HardConcreteGates,
    act_points,
    hard_concrete,
    hard_concrete_mean,
    open_probability,
    share_activation,
)
from mtlprune.engine.sparsity import sparsity_report
from mtlprune.registry import ARCHS

TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
ARCH_SETTINGS = {
    "vit_t_convnext": {"width": 0.25, "head_width": 0.03125},
    "deeplab_resnet34": {"width": 0.125, "head_width": 0.03125},
}


def _model(arch: str, seed: int = 0) -> DeltaSharedMTL:
    torch.manual_seed(seed)
    mtl = ARCHS.get(arch)(TASKS, **ARCH_SETTINGS[arch])
    if arch == "deeplab_resnet34":  # BN running statistics that are not the defaults
        with torch.no_grad():
            mtl.train()
            mtl(torch.randn(4, 3, 32, 32))
    return DeltaSharedMTL(mtl.backbone, dict(mtl.heads), "segment_semantic").eval()


def _randomise(model: DeltaSharedMTL, density: float = 0.3, scale: float = 0.05, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for task in model.sub_tasks:
            for d in model.delta(task).values():
                d.copy_(
                    torch.randn(d.shape, generator=gen)
                    * scale
                    * (torch.rand(d.shape, generator=gen) < density)
                )


def _x(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- identities


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
@pytest.mark.parametrize("training", [False, True])
def test_a_zero_delta_gives_every_sub_task_the_base_features_bit_for_bit(arch, training):
    model = _model(arch).train(training)
    x = _x()
    with torch.no_grad():
        base = model.backbone(x)
        for task in model.sub_tasks:
            assert torch.equal(model.task_features(task, x), base)
        # with gates being learned too (z·z₂·0 = 0), in either mode
        for i, task in enumerate(model.sub_tasks):
            shapes = {n: p.shape for n, p in model.delta(task).items()}
            model.add_gates(task, HardConcreteGates(shapes, 5.0, (-1.5, 1.5), seed=i))
            assert torch.equal(model.task_features(task, x), base)


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_open_gates_and_no_sharing_equal_a_standalone_network_with_the_summed_weights(arch):
    model = _model(arch)
    _randomise(model)
    x = _x()
    with torch.no_grad():
        outputs = model(x)
        for task in model.sub_tasks:
            # an independent network: a copy of the base with W_b + δ_t loaded into it, and the task's head
            net = copy.deepcopy(model.backbone)
            for name, p in net.named_parameters():
                p.add_(model.delta(task)[name])
            expected = model.heads[task](net(x))
            torch.testing.assert_close(outputs[task], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.standalone(task)(x)[task], expected, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(outputs[task], model.heads[task](model.backbone(x)))
        torch.testing.assert_close(
            outputs["segment_semantic"], model.heads["segment_semantic"](model.backbone(x))
        )
        # gates at their initial logit 5 are open: the deterministic gate is exactly 1
        task = model.sub_tasks[0]
        shapes = {n: p.shape for n, p in model.delta(task).items()}
        model.add_gates(task, HardConcreteGates(shapes, 5.0, (-1.5, 1.5), seed=0))
        assert torch.equal(model(x)[task], outputs[task])


def test_every_kind_of_delta_reaches_the_sub_task_linear_conv_and_norms():
    for arch, kinds in (
        ("vit_t_convnext", (nn.Linear, nn.Conv2d, nn.LayerNorm)),
        ("deeplab_resnet34", (nn.Conv2d, nn.BatchNorm2d)),
    ):
        model = _model(arch)
        task = model.sub_tasks[0]
        x = _x()
        modules = dict(model.backbone.named_modules())
        for kind in kinds:
            name = next(n for n, m in modules.items() if isinstance(m, kind))
            with torch.no_grad():
                for p in model.delta(task).values():
                    p.zero_()
                model.delta(task)[f"{name}.weight"].fill_(0.1)
                assert not torch.equal(model.task_features(task, x), model.backbone(x)), (arch, kind)


def test_the_delta_decomposition_of_linear_conv_and_batched_matmul():
    """(W_b + ΔW)(x_b + δx) = y_b + W_b·δx + ΔW·x_s: what a delta-aware cost count charges."""
    gen = torch.Generator().manual_seed(0)
    w, dw = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    xb, dx = torch.randn(5, 6, generator=gen), torch.randn(5, 6, generator=gen)
    xs = xb + dx
    torch.testing.assert_close(F.linear(xs, w + dw), F.linear(xb, w) + F.linear(dx, w) + F.linear(xs, dw))
    cw, cdw = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    cx, cdx = torch.randn(2, 3, 9, 9, generator=gen), torch.randn(2, 3, 9, 9, generator=gen)
    conv = lambda x, k: F.conv2d(x, k, stride=2, dilation=2, padding=2)  # noqa: E731
    torch.testing.assert_close(
        conv(cx + cdx, cw + cdw), conv(cx, cw) + conv(cdx, cw) + conv(cx + cdx, cdw), atol=1e-5, rtol=1e-5
    )
    a, da = torch.randn(3, 4, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    b, db = torch.randn(3, 5, 2, generator=gen), torch.randn(3, 5, 2, generator=gen)
    torch.testing.assert_close((a + da) @ (b + db), a @ b + da @ b + (a + da) @ db, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ hard concrete


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 1.5, 5.0])
def test_a_gate_is_open_with_probability_sigmoid_alpha(alpha):
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    z = hard_concrete(torch.full((n,), alpha, dtype=torch.float64), u, (-1.5, 1.5))
    p = torch.sigmoid(torch.tensor(alpha, dtype=torch.float64)).item()
    assert (
        abs(float((z > 0).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4
    )  # 1e-4: the u clamp
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0


def test_the_open_probability_of_an_asymmetric_stretch_and_the_expected_l0():
    alpha, stretch, n = 0.7, (-0.1, 1.1), 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    z = hard_concrete(torch.full((n,), alpha, dtype=torch.float64), u, stretch)
    p = float(open_probability(torch.tensor(alpha, dtype=torch.float64), stretch))
    assert p == pytest.approx(1 / (1 + math.exp(-(alpha - math.log(0.1 / 1.1)))))
    assert abs(float((z > 0).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4
    gates = HardConcreteGates({"a": torch.Size([3, 2]), "b": torch.Size([4])}, 0.5, stretch, seed=0)
    with torch.no_grad():
        gates.elements["a"].copy_(torch.linspace(-3, 3, 6).view(3, 2))
    expected = sum(
        float(open_probability(t.detach(), stretch).sum())
        for t in [gates.elements["a"], gates.elements["b"], gates.tensors["a"], gates.tensors["b"]]
    )
    assert float(gates.expected_l0().detach()) == pytest.approx(expected)
    # the deterministic (evaluation) gate
    assert float(hard_concrete_mean(torch.tensor(5.0), (-1.5, 1.5))) == 1.0
    assert float(hard_concrete_mean(torch.tensor(-5.0), (-1.5, 1.5))) == 0.0
    assert float(hard_concrete_mean(torch.tensor(0.0), (-1.5, 1.5))) == 0.0  # σ(0)·3 − 1.5 = 0
    assert float(hard_concrete_mean(torch.tensor(math.log(2.0)), (-1.5, 1.5))) == pytest.approx(0.5)


def test_autograd_through_the_gates_matches_the_reference_s_manual_routing():
    """Its Step 1 routes ∂δ = ∂p·z·z₂, ∂α = ∂p·δ·z₂·dz/dα, ∂α₂ = Σ ∂p·δ·z·dz₂/dα₂ by hand."""
    gen = torch.Generator().manual_seed(5)
    low, high = -1.5, 1.5
    delta = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_()
    alpha = (torch.randn(50, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    alpha2 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    u = torch.rand(50, generator=gen, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    u2 = torch.tensor(0.37, dtype=torch.float64)
    upstream = torch.randn(50, generator=gen, dtype=torch.float64)
    z, z2 = hard_concrete(alpha, u, (low, high)), hard_concrete(alpha2, u2, (low, high))
    (upstream * (z * z2 * delta)).sum().backward()

    def manual(a: torch.Tensor, uu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(uu.log() - (1 - uu).log() + a)
        t = s * (high - low) + low
        return t.clamp(0, 1), (t < 1).double() * (t > 0).double() * (high - low) * s * (1 - s)

    zm, dz = manual(alpha.detach(), u)
    z2m, dz2 = manual(alpha2.detach(), u2)
    torch.testing.assert_close(delta.grad, upstream * zm * z2m)
    torch.testing.assert_close(alpha.grad, upstream * delta.detach() * z2m * dz)
    torch.testing.assert_close(alpha2.grad, (upstream * delta.detach() * zm * dz2).sum())


def test_gate_noise_is_a_function_of_the_state_so_a_resume_draws_the_same_gates():
    shapes = {"w": torch.Size([5, 4]), "b": torch.Size([5])}
    first = HardConcreteGates(shapes, 0.5, (-1.5, 1.5), seed=11, group_gates=False)
    samples = [first.sample() for _ in range(3)]
    assert int(first.draws) == 3 and not torch.equal(samples[0]["w"], samples[1]["w"])
    resumed = HardConcreteGates(shapes, 0.5, (-1.5, 1.5), seed=0, group_gates=False)
    state = first.state_dict()
    state["draws"] = torch.tensor(1)  # as if checkpointed after the first draw
    resumed.load_state_dict(state)
    for expected in samples[1:]:
        got = resumed.sample()
        assert all(torch.equal(got[k], expected[k]) for k in shapes)
    assert all(torch.equal(first.sample(draw=2)[k], samples[2][k]) for k in shapes)  # the last sample, again
    other = HardConcreteGates(shapes, 0.5, (-1.5, 1.5), seed=12, group_gates=False)
    assert not torch.equal(other.sample()["w"], samples[0]["w"])


# ------------------------------------------------------------------------------ activation sharing


def test_share_activation_zeroes_differences_below_the_threshold():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sub = torch.tensor([1.1, 2.5, 2.9, 4.0])
    assert torch.equal(share_activation(sub, base, 0.15), base + torch.tensor([0.0, 0.5, 0.0, 0.0]))
    assert torch.equal(share_activation(sub, base, 0.0), base + (sub - base))


def test_the_vit_act_points_are_the_reference_s_and_thresholds_are_per_block():
    model = _model("vit_t_convnext")
    depth = len(model.backbone.encoder)
    assert set(model.penalty_points) == {
        f"encoder.{i}.{p}"
        for i in range(depth)
        for p in ("norm1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.act", "mlp.fc2")
    }
    assert set(model.sharing_points) == {
        f"encoder.{i}.{p}" for i in range(depth) for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    model.set_thresholds([0.1 * (i + 1) for i in range(depth)])
    assert model.layer_thresholds == {i: pytest.approx(0.1 * (i + 1)) for i in range(depth)}
    with pytest.raises(ValueError, match="sharing layers"):
        model.set_thresholds([0.1, 0.2])
    resnet = act_points(_model("deeplab_resnet34").backbone)[1]  # the CNN adaptation: every conv
    assert len(resnet) == sum(
        1 for m in _model("deeplab_resnet34").backbone.modules() if isinstance(m, nn.Conv2d)
    )


def test_a_huge_threshold_shares_every_activation_and_zero_shares_none():
    model = _model("vit_t_convnext")
    task = model.sub_tasks[0]
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():  # deltas only where sharing replaces the outputs: qkv, proj, fc1, fc2
        for name, d in model.delta(task).items():
            if any(k in name for k in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")):
                d.copy_(torch.randn(d.shape, generator=gen) * 0.1)
    x = _x()
    with torch.no_grad():
        plain = model(x)[task]
        model.set_thresholds(1e9)
        shared = model(x)[task]
        model.set_thresholds(0.0)
        again = model(x)[task]
    assert torch.equal(shared, model.heads[task](model.backbone(x)))  # every activation is the base's
    assert not torch.allclose(plain, shared)
    assert torch.equal(again, plain)


def test_the_activation_penalty_sums_absolute_differences_at_every_act_point():
    model = _model("vit_t_convnext").train()
    task = model.sub_tasks[0]
    x = _x()
    model.active_tasks = (task,)
    model.act_penalty = True
    out = model(x)
    assert set(out) == {task} and float(model.act_l1.detach()) == 0.0  # δ = 0: the same activations
    _randomise(model)
    base_acts, sub_acts = {}, {}
    modules = dict(model.backbone.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: base_acts.__setitem__(n, o))
        for n in model.penalty_points
    ]
    with torch.no_grad():
        model.backbone(x)
    for h in handles:
        h.remove()
    net = model.standalone(task)
    modules = dict(net.backbone.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: sub_acts.__setitem__(n, o))
        for n in model.penalty_points
    ]
    with torch.no_grad():
        net.backbone(x)
    for h in handles:
        h.remove()
    expected = sum(float((sub_acts[n] - base_acts[n]).abs().sum()) for n in model.penalty_points)
    model(x)
    assert float(model.act_l1.detach()) == pytest.approx(expected, rel=1e-4)
    model.act_l1.backward()  # differentiable in the delta
    assert any(d.grad is not None and d.grad.abs().sum() > 0 for d in model.delta(task).values())


# ---------------------------------------------------------------------------------------- storage


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_stored_parameters_are_the_base_the_delta_non_zeros_and_the_heads(arch):
    model = _model(arch)
    _randomise(model, density=0.2)
    task = model.sub_tasks[0]
    shapes = {n: p.shape for n, p in model.delta(task).items()}
    model.add_gates(task, HardConcreteGates(shapes, 5.0, (-1.5, 1.5), seed=0))
    assert any(k.startswith("gates.") for k in model.state_dict())
    model.remove_gates()
    assert not any(k.startswith("gates.") for k in model.state_dict())  # no gate tensor is exported
    report = sparsity_report(model, requested=0.8)
    p_base = sum(p.numel() for p in model.backbone.parameters())
    p_heads = sum(p.numel() for p in model.heads.parameters())
    nnz = {t: sum(int(torch.count_nonzero(p)) for p in model.delta(t).values()) for t in model.sub_tasks}
    size = {t: sum(p.numel() for p in model.delta(t).values()) for t in model.sub_tasks}
    assert report["params_stored"] == p_base + sum(nnz.values()) + p_heads
    assert report["params_index_bits"] == sum(size.values()) == 2 * p_base
    nonzero = sum(
        int(torch.count_nonzero(p)) for p in [*model.backbone.parameters(), *model.heads.parameters()]
    )
    # params_nonzero counts what is non-zero (the base's zero biases are not); params_stored the base in full
    assert report["params_nonzero"] == nonzero + sum(nnz.values())
    for t in model.sub_tasks:
        assert report[f"sparsity.delta.{t}"] == 1 - nnz[t] / size[t]
        assert report[f"params_delta_nonzero.{t}"] == nnz[t] and report[f"params_delta.{t}"] == size[t]
    assert report["achieved_sparsity"] == 1 - sum(nnz.values()) / sum(size.values())
    assert report["axis"] == "delta" and report["sparsity.backbone"] == 0.0
    assert all(info["sparsity"] < 1 for info in report["layers"].values())  # the weights tasks run with
    assert set(report["delta_layers"]) == set(model.prunable_parameters())
    assert {model.component_of(n) for n in model.prunable_parameters()} == {
        f"delta/{t}" for t in model.sub_tasks
    }


def test_static_flops_count_each_task_s_own_network():
    model = _model("vit_t_convnext")
    flops = delta_flops(model, (32, 32), (32, 32))
    from mtlprune.engine.costs import count_flops

    base = count_flops(model.standalone("segment_semantic"), (32, 32), (32, 32))
    assert flops["flops_dense.backbone"] == base["flops_dense.backbone"]
    for task in model.sub_tasks:
        own = count_flops(model.standalone(task), (32, 32), (32, 32))
        assert flops[f"flops_dense.path.{task}"] == own[f"flops_dense.path.{task}"]
        assert flops[f"flops_dense.delta.{task}"] == base["flops_dense.backbone"]  # no sharing: a full pass
    assert flops["flops_dense"] == flops["flops_dense.backbone"] + sum(
        flops[f"flops_dense.delta.{t}"] for t in model.sub_tasks
    ) + sum(flops[f"flops_dense.head.{t}"] for t in model.tasks)


def test_the_support_of_the_last_training_pass_is_remembered_for_the_faithful_rule():
    model = _model("vit_t_convnext").train()
    task = model.sub_tasks[0]
    _randomise(model, density=0.5)
    shapes = {n: p.shape for n, p in model.delta(task).items()}
    gates = HardConcreteGates(shapes, 0.3, (-1.5, 1.5), seed=3, remember=True)
    model.add_gates(task, gates)
    model.active_tasks = (task,)
    with torch.no_grad():
        model(_x())
        drawn = gates.sample(draw=int(gates.draws) - 1)  # that pass's gates, drawn again
    support = gates.last_support()
    for name, delta in model.delta(task).items():
        assert torch.equal(support[name], (drawn[name] != 0) & (delta != 0)), name
    assert 0 < sum(int(s.sum()) for s in support.values()) < sum(s.numel() for s in support.values())
    assert any(k.startswith(f"gates.{task}.support.") for k in model.state_dict())  # checkpointed
