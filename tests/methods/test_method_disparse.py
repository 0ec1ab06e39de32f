"""DiSparse (methods/disparse.py): the keep-ratio solver by hand and against its bisection definition, the
per-task scores against autograd, the magnitude equivalence, ERK with a power, the per-task union regrowth
by hand, the dynamic callback on a toy model, and all three variants end to end on the tiny matrix."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import types
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlprune.methods.disparse  # noqa: F401  (registers disparse-static, disparse-pretrained, disparse-dynamic)
from mtlprune.engine.build import build_model
from mtlprune.engine.context import MethodContext
from mtlprune.engine.data import build_dataset
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import apply_masks, erk_densities, select_masks
from mtlprune.engine.train import StepRunner
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.disparse import (
    XAVIER_SALT,
    DisparseDynamic,
    DisparseDynamicCallback,
    DisparsePretrained,
    DisparsePretrainedParams,
    DisparseStatic,
    DisparseStaticParams,
    disentangled_masks,
    disparse_layer_update,
    erk_keep_counts,
    gradient_scores,
    magnitude_scores,
    random_masks,
    resolve_criterion,
    static_scores,
    task_pools,
    union_grow,
    xavier_reinit,
)
from mtlprune.registry import METHODS
from mtlprune.spec import MethodSpec
from mtlprune.store import Store
from mtlprune.store.maskio import TASK_MASKS, read_task_masks
from tests.helpers import load_masks, tiny_matrix

# --------------------------------------------------------------------------- (1) the solver by hand

POOLS = {"A": ["b", "ha"], "B": ["b", "hb"]}
# Task A ranks b0 (6), b1 (5), ha0 (4), ha1 (3), b3 (2), b2 (1): entry ratios 1/6, 2/6, ..., 6/6.
# Task B ranks b2 (6), b3 (5), hb1 (4), hb0 (3), b1 (2), b0 (1).
SCORES = {
    "A": {"b": torch.tensor([6.0, 5.0, 1.0, 2.0]), "ha": torch.tensor([4.0, 3.0])},
    "B": {"b": torch.tensor([1.0, 2.0, 6.0, 5.0]), "hb": torch.tensor([3.0, 4.0])},
}


def _on(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.flatten()).flatten().tolist()


@pytest.mark.parametrize(
    ("target", "ratio", "backbone", "ha", "hb", "task_a", "task_b"),
    [
        # Keep 6 of 8: r = 3/6 → A keeps {b0, b1, ha0}, B keeps {b2, b3, hb1}; the backbone is their union.
        (0.25, 0.5, [0, 1, 2, 3], [0], [1], ([0, 1], [0]), ([2, 3], [1])),
        # Keep 5: ha0 and hb1 both enter at 3/6; the tie goes to the earlier position (ha before hb), so B's
        # recorded mask stops one short: it is still a prefix of B's ranking and the union is exact.
        (0.375, 0.5, [0, 1, 2, 3], [0], [], ([0, 1], [0]), ([2, 3], [])),
        # Keep 4: r = 2/6 → each task keeps its top 2 (all backbone) and the union is the whole backbone:
        # the heads are pruned entirely although each task keeps only a third of its pool.
        (0.5, 2 / 6, [0, 1, 2, 3], [], [], ([0, 1], []), ([2, 3], [])),
        # Keep 2: b0 (A's first) and b2 (B's first) at r = 1/6.
        (0.75, 1 / 6, [0, 2], [], [], ([0], []), ([2], [])),
    ],
)
def test_solver_hand_example_union_in_the_backbone_and_own_masks_in_the_heads(
    target, ratio, backbone, ha, hb, task_a, task_b
):
    final, per_task, r = disentangled_masks(SCORES, POOLS, target)
    assert r == pytest.approx(ratio, abs=1e-15)
    assert (_on(final["b"]), _on(final["ha"]), _on(final["hb"])) == (backbone, ha, hb)
    assert sum(int(m.sum()) for m in final.values()) == 8 - round(target * 8)
    assert set(per_task["A"]) == {"b", "ha"} and set(per_task["B"]) == {"b", "hb"}
    assert (_on(per_task["A"]["b"]), _on(per_task["A"]["ha"])) == task_a
    assert (_on(per_task["B"]["b"]), _on(per_task["B"]["hb"])) == task_b
    assert torch.equal(final["b"], per_task["A"]["b"] | per_task["B"]["b"])  # backbone: OR of the tasks
    assert torch.equal(final["ha"], per_task["A"]["ha"]) and torch.equal(final["hb"], per_task["B"]["hb"])


def _top(flat: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return keep


def _union_at(scores, pools, ratio: float) -> dict[str, torch.Tensor]:
    """The reference's rule with one keep ratio r: each task keeps its top ⌊r·N_t⌋, the masks are OR-ed."""
    out: dict[str, torch.Tensor] = {}
    for task, pool in pools.items():
        flat = torch.cat([scores[task][n].flatten() for n in pool])
        keep = _top(flat, math.floor(ratio * flat.numel() + 1e-9))
        offset = 0
        for n in pool:
            size = scores[task][n].numel()
            part = keep[offset : offset + size].view(scores[task][n].shape)
            out[n] = out[n] | part if n in out else part
            offset += size
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_is_the_bisection_solution_with_an_exact_count(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"b1": (3, 5), "b2": (7,), "h1": (4,), "h2": (2, 9), "h3": (11,)}
    pools = {"t1": ["b1", "b2", "h1"], "t2": ["b1", "b2", "h2"], "t3": ["b1", "b2", "h3"]}
    scores = {t: {n: torch.rand(shapes[n], generator=g) for n in pool} for t, pool in pools.items()}
    total = sum(math.prod(s) for s in shapes.values())
    for target in (0.1, 0.37, 0.5, 0.8, 0.95):
        final, per_task, r = disentangled_masks(scores, pools, target)
        kept = sum(int(m.sum()) for m in final.values())
        assert kept == total - round(target * total)
        # r is the smallest ratio whose union reaches the count: union(r⁻) ⊆ final ⊆ union(r).
        above, below = _union_at(scores, pools, r), _union_at(scores, pools, r - 1e-7)
        assert sum(int(m.sum()) for m in below.values()) < kept <= sum(int(m.sum()) for m in above.values())
        for n in shapes:
            assert not (below[n] & ~final[n]).any() and not (final[n] & ~above[n]).any()
        for task, pool in pools.items():
            flat = torch.cat([per_task[task][n].flatten() for n in pool])
            own = torch.cat([scores[task][n].flatten() for n in pool])
            assert torch.equal(flat, _top(own, int(flat.sum())))  # a top-k of the task's own scores
            assert int(flat.sum()) in (
                math.floor(r * own.numel() + 1e-9),
                math.floor(r * own.numel() + 1e-9) - 1,
            )
        for n in ("b1", "b2"):
            union = per_task["t1"][n] | per_task["t2"][n] | per_task["t3"][n]
            assert torch.equal(union, final[n])


def test_solver_rejects_bad_input():
    with pytest.raises(ValueError, match="target"):
        disentangled_masks(SCORES, POOLS, 1.0)
    with pytest.raises(KeyError, match="no score"):
        disentangled_masks({"A": {"b": SCORES["A"]["b"]}, "B": SCORES["B"]}, POOLS, 0.5)
    bad = {"A": SCORES["A"], "B": {"b": torch.ones(5), "hb": torch.ones(2)}}
    with pytest.raises(ValueError, match="shapes"):
        disentangled_masks(bad, POOLS, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        disentangled_masks(
            {"A": SCORES["A"], "B": {**SCORES["B"], "hb": torch.tensor([1.0, math.nan])}}, POOLS, 0.5
        )


# ------------------------------------------------------------------------------ (2) per-task scores


def _two_task_toy() -> tuple[MTLModel, list[dict[str, Any]]]:
    """Conv 3→2 + BN + ReLU, heads a (dropout, conv 2→1) and b (dropout, conv 2→2); fixed weights."""
    g = torch.Generator().manual_seed(7)
    model = MTLModel(
        backbone=nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()),
        heads={
            "a": nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 1, 1, bias=False)),
            "b": nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 2, 1, bias=False)),
        },
    ).double()
    with torch.no_grad():
        model.backbone[0].weight.copy_(torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64))
        model.backbone[1].weight.copy_(torch.tensor([1.3, -0.6], dtype=torch.float64))
        model.backbone[1].bias.copy_(torch.tensor([0.4, 0.1], dtype=torch.float64))
        model.heads["a"][1].weight.copy_(torch.randn(1, 2, 1, 1, generator=g, dtype=torch.float64))
        model.heads["b"][1].weight.copy_(torch.randn(2, 2, 1, 1, generator=g, dtype=torch.float64))
    batches = [
        {
            "input": torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64),
            "a": torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64),
            "b": torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64),
        }
        for _ in range(3)
    ]
    return model, batches


TOY_LOSSES = {
    "a": lambda out, y: 0.5 * ((out - y) ** 2).mean(),
    "b": lambda out, y: (out - y).abs().mean(),
}


def _toy_losses(outputs, batch) -> dict[str, torch.Tensor]:
    return {t: fn(outputs[t], batch[t]) for t, fn in TOY_LOSSES.items()}


def _toy_task_loss(model: MTLModel, task: str, w: torch.Tensor, head: torch.Tensor, batch) -> torch.Tensor:
    """Task ``task``'s own loss written out with explicit conv weights (BN batch statistics, dropout off)."""
    bn = model.backbone[1]
    h = F.conv2d(batch["input"], w)
    h = F.batch_norm(h, None, None, bn.weight.detach(), bn.bias.detach(), training=True, eps=bn.eps)
    return TOY_LOSSES[task](F.conv2d(F.relu(h), head), batch[task])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("criterion", ["static", "static-xavier", "gradient"])
def test_per_task_scores_equal_a_direct_autograd_computation(criterion):
    model, batches = _two_task_toy()
    before = _state(model)
    pools = task_pools(model.prunable_parameters(), model.tasks, model.component_of)
    assert pools == {
        "a": ["backbone.0.weight", "heads.a.1.weight"],
        "b": ["backbone.0.weight", "heads.b.1.weight"],
    }
    if criterion == "gradient":
        scores = gradient_scores(model, batches, _toy_losses, pools)
    else:
        reinit = torch.Generator().manual_seed(5) if criterion == "static-xavier" else None
        scores = static_scores(model, batches, _toy_losses, pools, reinit=reinit)
    w = model.backbone[0].weight.detach()
    heads = {t: model.heads[t][1].weight.detach() for t in ("a", "b")}
    if criterion == "static-xavier":  # the reference's copy: Xavier-normal on every conv, in module order
        g = torch.Generator().manual_seed(5)
        w, heads["a"], heads["b"] = (
            nn.init.xavier_normal_(torch.empty_like(t), generator=g) for t in (w, heads["a"], heads["b"])
        )
        assert not torch.allclose(w, model.backbone[0].weight)
    for task in ("a", "b"):
        head = heads[task]
        total_w, total_h = torch.zeros_like(w), torch.zeros_like(head)
        for batch in batches:  # Σ_b |∂L_t/∂c| at c = 1 (static) or Σ_b |∂L_t/∂w| (gradient), batch by batch

            def loss(cw, ch, batch=batch, task=task, head=head, w=w):
                if criterion != "gradient":
                    return _toy_task_loss(model, task, w * cw, head * ch, batch)
                return _toy_task_loss(model, task, cw, ch, batch)

            at = (torch.ones_like(w), torch.ones_like(head)) if criterion != "gradient" else (w, head)
            dw, dh = torch.func.grad(loss, argnums=(0, 1))(*at)
            total_w, total_h = total_w + dw.abs(), total_h + dh.abs()
        if criterion == "gradient":
            total_w, total_h = total_w * w**2, total_h * head**2
        assert set(scores[task]) == set(pools[task])  # the other task's head is not in the pool
        torch.testing.assert_close(scores[task]["backbone.0.weight"], total_w, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(scores[task][f"heads.{task}.1.weight"], total_h, rtol=1e-12, atol=1e-15)
    # The two tasks score the shared backbone differently (their own losses).
    assert not torch.allclose(scores["a"]["backbone.0.weight"], scores["b"]["backbone.0.weight"])
    # Scoring changed nothing the training starts from (weights, BN statistics, counters) and left no grads.
    assert _state(model).keys() == before.keys() and all(
        torch.equal(_state(model)[k], before[k]) for k in before
    )
    assert all(p.grad is None for p in model.parameters()) and model.training


class FakeCtx:
    """The slice of MethodContext the one-shot variants use, on the toy model."""

    def __init__(
        self, model: MTLModel, batches, target: float, dataset: str = "nyuv2", seed: int = 0
    ) -> None:
        self.model, self._batches, self.target = model, batches, target
        self.spec = SimpleNamespace(data=SimpleNamespace(dataset=dataset), seed=seed)
        self.tasks = model.tasks
        self.masks = None
        self.task_masks: dict[str, Any] = {}
        self.logs: list[dict[str, Any]] = []
        self.recorded: dict[str, Any] = {}
        self.trained: list[tuple[Any, str]] = []

    def prunable(self):
        return self.model.prunable_parameters()

    def component_of(self, name):
        return self.model.component_of(name)

    def batches(self, n, batch_size=None, salt=0):
        yield from self._batches[:n]

    def generator(self, salt=0):
        return torch.Generator().manual_seed(1_000 * self.spec.seed + salt)

    def task_losses(self, outputs, batch):
        return _toy_losses(outputs, batch)

    def apply_masks(self, masks):
        apply_masks(self.prunable(), masks)
        self.masks = masks

    def record_task_masks(self, task_masks):
        self.task_masks = task_masks

    def log(self, **scalars):
        self.logs.append(scalars)

    def record(self, **values):
        self.recorded.update(values)

    def sparse_training_spec(self):
        return "sparse-spec"

    def train(self, spec=None, *, phase="train", **_):
        self.trained.append((spec, phase))
        return 0

    def finetune(self, spec=None):
        self.trained.append((spec, "finetune"))
        return 0


def _wide_toy() -> MTLModel:
    """A toy with enough weights for a threshold test: linear backbone 6→8, heads a 8→3 and b 8→5."""
    torch.manual_seed(11)
    return MTLModel(
        backbone=nn.Sequential(nn.Flatten(), nn.Linear(6, 8, bias=False)),
        heads={"a": nn.Linear(8, 3, bias=False), "b": nn.Linear(8, 5, bias=False)},
    )


@pytest.mark.parametrize("target", [0.3, 0.6, 0.85])
def test_pretrained_magnitude_keeps_backbone_weights_above_the_smallest_task_threshold(target):
    model = _wide_toy()
    dense = {n: p.detach().clone() for n, p in model.prunable_parameters().items()}
    ctx = FakeCtx(model, [], target)
    DisparsePretrained(DisparsePretrainedParams()).run(ctx)
    assert ctx.trained == [(None, "finetune")]
    n = sum(w.numel() for w in dense.values())
    assert sum(int((~m).sum()) for m in ctx.masks.values()) == round(target * n)
    # τ_t: the smallest |w| task t keeps in its pool (backbone + its head).
    tau = {
        t: min(float(dense[name].abs()[m].min()) for name, m in ctx.task_masks[t].items() if m.any())
        for t in ("a", "b")
    }
    # The notes' equivalence: the backbone keeps |w| ≥ min_t τ_t; each head keeps |w| ≥ its own τ.
    assert torch.equal(ctx.masks["backbone.1.weight"], dense["backbone.1.weight"].abs() >= min(tau.values()))
    for t in ("a", "b"):
        assert torch.equal(ctx.masks[f"heads.{t}.weight"], dense[f"heads.{t}.weight"].abs() >= tau[t])
        assert torch.equal(ctx.masks[f"heads.{t}.weight"], ctx.task_masks[t][f"heads.{t}.weight"])
    assert torch.equal(
        ctx.masks["backbone.1.weight"],
        ctx.task_masks["a"]["backbone.1.weight"] | ctx.task_masks["b"]["backbone.1.weight"],
    )
    for name, p in model.prunable_parameters().items():  # pruned weights are zeroed, kept ones untouched
        assert torch.equal(p.detach(), dense[name] * ctx.masks[name])
    (log,) = ctx.logs
    assert log["disparse.sparsity"] == pytest.approx(round(target * n) / n)
    assert (
        0.0 <= log["disparse.backbone_iou"] <= 1.0
        and ctx.recorded["keep_ratio"] == log["disparse.keep_ratio"]
    )


@pytest.mark.parametrize("scoring_init", ["xavier", "as_initialised"])
def test_static_method_uses_the_static_scores_and_trains_on_the_at_init_budget(scoring_init):
    model, batches = _two_task_toy()
    init = _state(model)
    pools = task_pools(model.prunable_parameters(), model.tasks, model.component_of)
    ctx = FakeCtx(model, batches, 0.5, seed=3)
    reinit = ctx.generator(XAVIER_SALT) if scoring_init == "xavier" else None
    expected, per_task, _ = disentangled_masks(
        static_scores(model, batches[:2], _toy_losses, pools, reinit=reinit), pools, 0.5
    )
    DisparseStatic(DisparseStaticParams(batches=2, scoring_init=scoring_init)).run(ctx)
    assert all(torch.equal(ctx.masks[n], expected[n]) for n in expected)
    assert all(torch.equal(ctx.task_masks[t][n], per_task[t][n]) for t in per_task for n in per_task[t])
    assert ctx.trained == [("sparse-spec", "train")]
    assert ctx.recorded["scoring_init"] == scoring_init
    # The mask is applied to the model as initialised, never to the re-initialised scoring copy.
    for name, p in model.prunable_parameters().items():
        assert torch.equal(p.detach(), init[name] * ctx.masks[name])


def test_static_default_is_the_reference_xavier_copy():
    assert DisparseStaticParams().scoring_init == "xavier"
    assert MethodSpec(name="disparse-static").parsed_params().scoring_init == "xavier"  # key absent: xavier
    # The default is dropped from the stored params (identity); the old behaviour is an explicit option.
    assert MethodSpec(name="disparse-static", params={"scoring_init": "xavier"}).params == {}
    assert MethodSpec(name="disparse-static", params={"scoring_init": "as_initialised"}).params == {
        "scoring_init": "as_initialised"
    }


def test_xavier_reinit_redraws_conv_and_linear_weights_only_from_its_generator():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(400, 600))
    before = _state(net)
    rng = torch.get_rng_state()
    xavier_reinit(net, torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not drawn from
    after = _state(net)
    for key in before:  # biases and BatchNorm untouched, both weights redrawn
        assert torch.equal(before[key], after[key]) == (key not in ("0.weight", "3.weight")), key
    # Xavier-normal, gain 1: std = sqrt(2 / (fan_in + fan_out)); 240,000 draws put the sample std within 1%.
    assert float(after["3.weight"].std()) == pytest.approx(math.sqrt(2 / (400 + 600)), rel=0.01)
    again = xavier_reinit(copy.deepcopy(net), torch.Generator().manual_seed(9))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())  # the generator decides


def _static_toy() -> tuple[MTLModel, list[dict[str, Any]]]:
    """Two 3×3 convs (backbone, N(0, 0.01) as the reference's backbone) and two 1×1 conv heads with biases and
    dropout (PyTorch's default init): 216 + 576 + 32 + 16 = 840 prunable weights, float64."""
    g = torch.Generator().manual_seed(21)
    torch.manual_seed(21)
    model = MTLModel(
        backbone=nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        ),
        heads={
            "a": nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 4, 1)),
            "b": nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 2, 1)),
        },
    ).double()
    with torch.no_grad():
        for i in (0, 3):
            model.backbone[i].weight.normal_(0.0, 0.01, generator=g)
    batches = [
        {
            "input": torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
            "a": torch.randn(4, 4, 5, 5, generator=g, dtype=torch.float64),
            "b": torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64),
        }
        for _ in range(2)
    ]
    return model, batches


def _reference_static_rule(model: MTLModel, batches, keep_ratio: float, generator) -> dict[str, torch.Tensor]:
    """The reference's disparse_prune_static (prune_utils.py:28-186), written out independently of the method.

    Copy; every conv's weight re-initialised with xavier_normal_ (from ``generator`` instead of the global
    RNG), frozen, and multiplied by a ones ``weight_mask`` parameter in a patched forward; per batch and per
    task one forward, that task's own loss, backward, Σ |∂L/∂mask| over the task's layers (backbone + its
    head); per task: scores / their sum, keep those ≥ the k-th largest, k = int(N_t · keep_ratio); the
    backbone takes the OR over tasks, a head its task's mask. Dropout off (the benchmark's one deviation).
    """
    net = copy.deepcopy(model)
    net.train()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()

    def masked_conv(self, x):
        return F.conv2d(x, self.weight * self.weight_mask, self.bias, self.stride, self.padding)

    layers = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            module.weight_mask = nn.Parameter(torch.ones_like(module.weight))
            nn.init.xavier_normal_(module.weight, generator=generator)
            module.weight.requires_grad = False
            module.forward = types.MethodType(masked_conv, module)
            layers[f"{name}.weight"] = module
    grads_abs: dict[str, dict[str, torch.Tensor]] = {t: {} for t in model.tasks}
    for batch in batches:
        for task in model.tasks:
            net.zero_grad()
            TOY_LOSSES[task](net(batch["input"])[task], batch[task]).backward()
            for name, layer in layers.items():
                if name.startswith(("backbone.", f"heads.{task}.")):
                    g = layer.weight_mask.grad.detach().abs()
                    grads_abs[task][name] = grads_abs[task][name] + g if name in grads_abs[task] else g
    keep: dict[str, dict[str, torch.Tensor]] = {}
    for task, grads in grads_abs.items():
        all_scores = torch.cat([x.flatten() for x in grads.values()])
        norm = all_scores.sum()
        all_scores = all_scores / norm
        threshold = torch.topk(all_scores, int(len(all_scores) * keep_ratio), sorted=True).values[-1]
        keep[task] = {name: (x / norm) >= threshold for name, x in grads.items()}
    final = {}
    for name in layers:
        if name.startswith("backbone."):
            final[name] = torch.stack([keep[t][name] for t in model.tasks]).any(0)
        else:
            final[name] = keep[name.split(".")[1]][name]
    return final


def _iou(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
    inter = sum(int((x[n] & y[n]).sum()) for n in x)
    return inter / sum(int((x[n] | y[n]).sum()) for n in x)


def test_static_xavier_kept_set_is_the_reference_rule_exactly():
    """IoU 1.0: at the target the reference's keep ratio reaches, the solver keeps exactly its kept set."""
    model, batches = _static_toy()
    ctx = FakeCtx(model, batches, 0.0, seed=4)
    reference = _reference_static_rule(model, batches, 0.3, ctx.generator(XAVIER_SALT))
    n = sum(m.numel() for m in reference.values())
    kept = sum(int(m.sum()) for m in reference.values())
    ctx.target = (n - kept) / n
    assert n == 840 and n - round(ctx.target * n) == kept
    DisparseStatic(DisparseStaticParams(batches=2)).run(ctx)  # the default: scoring_init xavier
    assert ctx.masks.keys() == reference.keys()
    assert all(torch.equal(ctx.masks[name], reference[name]) for name in reference)
    assert _iou(ctx.masks, reference) == 1.0
    assert 0.0 < ctx.recorded["keep_ratio"] <= 0.3


def test_static_scoring_init_changes_the_kept_set():
    """The option matters: the kept sets of the Xavier copy and of the trained initialisation differ."""
    model, batches = _static_toy()
    masks = {}
    for init in ("xavier", "as_initialised"):
        ctx = FakeCtx(model, batches, 0.7, seed=4)
        DisparseStatic(DisparseStaticParams(batches=2, scoring_init=init)).run(ctx)
        masks[init] = ctx.masks
        model.load_state_dict(_static_toy()[0].state_dict())  # undo the pruning for the next option
    iou = _iou(masks["xavier"], masks["as_initialised"])
    print(f"kept-set IoU, xavier vs as_initialised, 70% of 840 weights: {iou:.3f}")
    assert 0.0 < iou < 0.9


@pytest.mark.parametrize(
    ("criterion", "dataset", "resolved"),
    [
        ("auto", "nyuv2", "magnitude"),
        ("auto", "cityscapes", "magnitude"),
        ("auto", "taskonomy", "gradient"),
        ("auto", "toy", "magnitude"),
        ("magnitude", "taskonomy", "magnitude"),
        ("gradient", "nyuv2", "gradient"),
    ],
)
def test_pretrained_criterion_follows_the_dataset_as_the_reference(criterion, dataset, resolved):
    assert resolve_criterion(criterion, dataset) == resolved
    model, batches = _two_task_toy()
    pools = task_pools(model.prunable_parameters(), model.tasks, model.component_of)
    scores = (
        magnitude_scores(model, pools)
        if resolved == "magnitude"
        else gradient_scores(model, batches[:2], _toy_losses, pools)
    )
    expected, _, _ = disentangled_masks(scores, pools, 0.5)
    ctx = FakeCtx(model, batches, 0.5, dataset=dataset)
    DisparsePretrained(DisparsePretrainedParams(batches=2, criterion=criterion)).run(ctx)
    assert ctx.recorded["criterion"] == resolved  # method_state says which one ran
    assert all(torch.equal(ctx.masks[name], expected[name]) for name in expected)
    assert DisparsePretrainedParams().criterion == "auto"


# ----------------------------------------------------------------------------------------- (3) ERK


def test_erk_power_keeps_one_epsilon_and_flattens_the_allocation():
    shapes = {"a": (4, 2, 3, 3), "b": (64, 64, 3, 3), "c": (32, 64, 3, 3), "d": (3, 64, 1, 1)}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    for target in (0.5, 0.9):
        dens = erk_densities(shapes, target, 0.9)
        assert sum(dens[n] * sizes[n] for n in shapes) == pytest.approx((1 - target) * sum(sizes.values()))
        free = [n for n in shapes if dens[n] < 1.0]
        # One ε for every uncapped layer: d_l / (Σ dims / Π dims)^0.9 is the same.
        eps = {n: dens[n] / (sum(shapes[n]) / sizes[n]) ** 0.9 for n in free}
        assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-12)
    # A power below 1 flattens the allocation: the big layer b gets more than under plain ERK.
    assert erk_densities(shapes, 0.9, 0.9)["b"] > erk_densities(shapes, 0.9)["b"]


def test_erk_counts_are_exact_and_the_random_mask_matches_the_shared_erk_scope_at_power_one():
    shapes = {"a": (4, 2, 3, 3), "b": (64, 64, 3, 3), "c": (32, 64, 3, 3), "d": (3, 64, 1, 1)}
    total = sum(math.prod(s) for s in shapes.values())
    for power in (0.9, 1.0):
        keep = erk_keep_counts(shapes, 0.9, power)
        assert sum(keep.values()) == total - round(0.9 * total)
        masks = random_masks(shapes, keep, torch.Generator().manual_seed(3))
        assert {n: int(m.sum()) for n, m in masks.items()} == keep
    g = torch.Generator().manual_seed(3)
    shared = select_masks({n: torch.rand(s, generator=g) for n, s in shapes.items()}, 0.9, "erk")
    ours = random_masks(shapes, erk_keep_counts(shapes, 0.9, 1.0), torch.Generator().manual_seed(3))
    assert all(torch.equal(shared[n], ours[n]) for n in shapes)


def _reference_erk(shapes: dict[str, tuple[int, ...]], density: float, power: float = 0.9) -> dict:
    """googleAI_ERK (dynamic_prune.py:80-191) as arithmetic: ε solved over the non-dense layers; while the
    largest ε·raw exceeds 1, the layers with the largest raw become dense and ε is solved again."""
    dense: set[str] = set()
    while True:
        rhs = divisor = 0.0
        raw = {}
        for name, shape in shapes.items():
            n = math.prod(shape)
            if name in dense:
                rhs -= n * (1 - density)
            else:
                rhs += n * density
                raw[name] = (sum(shape) / n) ** power
                divisor += raw[name] * n
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps <= 1:
            return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}
        dense |= {name for name, r in raw.items() if r == top}


@pytest.mark.parametrize("dataset", ["nyuv2", "taskonomy"])
def test_published_dynamic_real_sparsity_is_the_reference_erk_rule_on_the_model_shapes(dataset):
    """results/published: the "90%" dynamic rows' real_sparsity follows from the shapes alone. At END the
    cosine prune rate is 0 and prune.l1_unstructured leaves r − round(r − d_l·n_l) = round(d_l·n_l) of a
    layer's r active weights, whatever r (the data) is."""
    from mtlprune.registry import ARCHS, DATASETS

    channels = DATASETS.get(dataset).task_channels
    tasks = {"nyuv2": ["segment_semantic", "normal"]}.get(dataset, list(channels))
    with torch.device("meta"):
        model = ARCHS.get("deeplab_resnet34")({t: channels[t] for t in tasks})
    shapes = {n: tuple(p.shape) for n, p in model.prunable_parameters().items()}
    total = sum(math.prod(s) for s in shapes.values())
    assert (len(shapes), total) == {"nyuv2": (60, 67_581_120), "taskonomy": (96, 136_705_216)}[dataset]
    density = _reference_erk(shapes, 0.1)
    kept = sum(min(math.prod(s), round(density[n] * math.prod(s))) for n, s in shapes.items())
    name = {"nyuv2": "disparse_table1_nyuv2.csv", "taskonomy": "disparse_table3_taskonomy.csv"}[dataset]
    with (resources.files("mtlprune.published") / name).open(newline="") as handle:
        recorded = {r["real_sparsity"] for r in csv.DictReader(handle) if r["method"] == "disparse-dynamic"}
    assert recorded == {"0.9"} and round(1 - kept / total, 4) == 0.9


# --------------------------------------------------------------------------- (4) regrowth by hand

# Candidates 1..8 (index 0 is active). |g_A|: ranking 1, 2, 5, 7, 6, 3 (index 4 and 8: zero gradient).
# |g_B|: ranking 3, 2, 4, 7, 1, 5 (index 6 and 8: zero). Best rank: 1→0, 3→0, 2→1, 4→2, 5→2, 7→3, 6→4.
G_A = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.0, 0.5, 0.2, 0.3, 0.0])
G_B = torch.tensor([0.1, 0.2, 0.85, 0.95, 0.6, 0.05, 0.0, 0.4, 0.0])
CANDIDATES = torch.tensor([False] + [True] * 8)


@pytest.mark.parametrize(
    ("n", "grown"),
    [
        (1, [1]),  # best rank 0: indices 1 and 3; the tie goes to position 1
        (2, [1, 3]),  # the union of each task's top-1
        (3, [1, 2, 3]),  # the union of each task's top-2 ({1, 2} ∪ {3, 2})
        (4, [1, 2, 3, 4]),  # top-3 union {1,2,3,4,5} is too big: 4 and 5 tie at rank 2, 4 comes first
        (10, [1, 2, 3, 4, 5, 6, 7]),  # index 8 has a zero gradient for both tasks: never grown
    ],
)
def test_union_grow_by_hand(n, grown):
    mask, tops = union_grow([G_A, G_B], CANDIDATES, n)
    assert _on(mask) == grown
    if n == 3:
        assert _on(tops[0]) == [1, 2, 5] and _on(tops[1]) == [2, 3, 4]  # each task's own top-3


def test_union_grow_with_one_task_is_its_top_n():
    mask, _ = union_grow([G_A], CANDIDATES, 3)
    assert _on(mask) == [1, 2, 5]


W = torch.tensor([0.5, -0.1, 0.0, 0.0, 0.3, -0.05])
MASK = torch.tensor([True, True, False, False, True, True])
LG_A = torch.tensor([0.2, 0.9, 0.4, 0.1, 0.0, 0.3])
LG_B = torch.tensor([0.0, 0.1, 0.05, 0.7, 0.2, 0.0])


def test_layer_update_by_hand():
    # n = 2 drops the two smallest active |w|: 5 (0.05), 1 (0.1) → kept {0, 4}; candidates {1, 2, 3, 5}.
    # A ranks 1, 2, 5, 3; B ranks 3, 1, 2 (5 has a zero gradient). Best ranks: 1→0, 3→0 → grow {1, 3}.
    new, grown, tops = disparse_layer_update(W, [LG_A, LG_B], MASK, 2)
    assert _on(new) == [0, 1, 3, 4] and int(new.sum()) == int(MASK.sum())
    assert _on(grown) == [3]  # 1 was dropped and regrown: it stays active (not newly grown)
    assert [_on(t) for t in tops] == [[1, 2], [1, 3]]
    # A head (one task): its own top-2 of the candidates, {1, 2}.
    new, grown, _ = disparse_layer_update(W, [LG_A], MASK, 2)
    assert _on(new) == [0, 1, 2, 4] and _on(grown) == [2]
    # No candidate has a gradient: the dropped weights come back, the mask is unchanged.
    zero = torch.zeros(6)
    new, grown, _ = disparse_layer_update(W, [zero, zero], MASK, 2)
    assert torch.equal(new, MASK) and not grown.any()
    # n = 0 changes nothing.
    assert torch.equal(disparse_layer_update(W, [LG_A, LG_B], MASK, 0)[0], MASK)


# ------------------------------------------------------------------------ (5) the dynamic callback


def test_callback_regrows_from_each_tasks_own_gradient_with_exact_counts():
    model = _wide_toy()
    params = model.prunable_parameters()
    pools = task_pools(params, model.tasks, model.component_of)
    g = torch.Generator().manual_seed(5)
    masks = random_masks(
        {n: tuple(p.shape) for n, p in params.items()}, {n: p.numel() // 2 for n, p in params.items()}, g
    )
    apply_masks(params, masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    optimizer.step()  # every slot is now non-zero
    apply_masks(params, masks)
    x, ya, yb = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g), torch.randn(5, 5, generator=g)

    def losses_of():
        out = model(x)
        return {"a": ((out["a"] - ya) ** 2).mean(), "b": (out["b"] - yb).abs().mean()}

    # Each task's own dense gradient, computed independently.
    expected = {}
    for task in ("a", "b"):
        names = pools[task]
        grads = torch.autograd.grad(losses_of()[task], [params[n] for n in names])
        expected[task] = dict(zip(names, grads, strict=True))
    callback = DisparseDynamicCallback(params, pools, delta_t=3, prune_rate=0.5, end_step=9)
    losses = losses_of()
    assert callback.loss_weights(1, losses) is None and callback._grads is None  # not an update step
    assert callback.loss_weights(3, losses) is None  # recipe weights kept
    for task in ("a", "b"):
        assert set(callback._grads[task]) == set(pools[task])
        for name in pools[task]:
            torch.testing.assert_close(callback._grads[task][name], expected[task][name])
    optimizer.zero_grad()
    sum(losses.values()).backward()  # the graph was retained for the trainer's backward
    before = {n: p.detach().clone() for n, p in params.items()}
    state = {n: {k: v.clone() for k, v in optimizer.state[params[n]].items()} for n in params}
    runner = SimpleNamespace(
        params=params, masks={n: m.clone() for n, m in masks.items()}, optimizer=optimizer
    )

    def set_masks(new):
        apply_masks(params, new)
        runner.masks = new

    runner.set_masks = set_masks
    callback.after_backward(3, runner)
    rate = 0.25 * (1 + math.cos(math.pi / 3))  # α_3 = ½ · 0.5 · (1 + cos(π · 3/9)) = 0.375
    new = runner.masks
    changed = 0
    for name, p in params.items():
        old = masks[name]
        assert int(new[name].sum()) == int(old.sum()), name  # per-layer counts never move
        grown = new[name] & ~old
        changed += int(grown.sum())
        assert (p.detach()[grown] == 0).all() and (p.detach()[~new[name]] == 0).all()
        assert torch.equal(p.detach()[new[name] & old], before[name][new[name] & old])
        for key in ("exp_avg", "exp_avg_sq"):
            assert (optimizer.state[p][key][grown] == 0).all()
            assert torch.equal(optimizer.state[p][key][~grown], state[name][key][~grown])
        # Growth is the tasks' union: for some m, ∪ top-m ⊆ grown-or-regrown ⊆ ∪ top-(m+1).
        k = int(old.sum())
        n = int(rate * k)
        w = before[name].abs().flatten()
        kept = old.flatten().clone()
        kept[torch.sort(torch.where(old.flatten(), w, torch.tensor(math.inf)), stable=True).indices[:n]] = (
            False
        )
        assert not (kept & ~new[name].flatten()).any()  # survivors of the drop stay
        came = new[name].flatten() & ~kept
        tasks = [t for t in ("a", "b") if name in pools[t]]

        def union_top(m, tasks=tasks, name=name, kept=kept):
            out = torch.zeros_like(kept)
            for t in tasks:
                s = torch.where(~kept, expected[t][name].abs().flatten(), torch.tensor(-1.0))
                out[torch.sort(s, descending=True, stable=True).indices[:m]] = True
            return out

        assert any(
            not (union_top(m) & ~came).any() and not (came & ~union_top(m + 1)).any() for m in range(n + 1)
        ), name
    assert changed > 0
    assert callback.after_step(3, runner) == {
        "disparse.prune_rate": pytest.approx(rate),
        "disparse.changed": float(changed),
        "disparse.sparsity": pytest.approx(
            1 - sum(int(m.sum()) for m in new.values()) / sum(m.numel() for m in new.values())
        ),
        "disparse.grow_overlap": pytest.approx(callback.updates[0]["disparse.grow_overlap"]),
    }
    assert callback.after_step(4, runner) is None
    assert [t for t in range(12) if callback.is_update_step(t)] == [0, 3, 6]


# ------------------------------------------------------------------------------ (6) end to end

NAMES = ["disparse-static", "disparse-pretrained", "disparse-dynamic"]
TARGETS = [0.7, 0.9]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    matrix = tiny_matrix(
        methods=[
            {"name": "disparse-static", "params": {"batches": 2}},
            {"name": "disparse-pretrained"},
            {"name": "disparse-dynamic", "params": {"delta_t": 2}},
        ],
        sparsities=TARGETS,
        runtime={"device": "cpu", "log_every": 1, "save_cell_models": True},
    )
    store = Store(tmp_path_factory.mktemp("disparse"))
    captured: dict[tuple[str, float], list[dict[str, int]]] = {}
    current: list[tuple[str, float]] = []
    original_train, original_set = MethodContext.train, StepRunner.set_masks

    def recording_train(self, spec=None, **kwargs):
        current[:] = [(self.spec.method.name, self.target)]
        return original_train(self, spec, **kwargs)

    def recording_set(self, masks):
        captured.setdefault(current[0], []).append({n: int(m.sum()) for n, m in masks.items()})
        return original_set(self, masks)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodContext, "train", recording_train)
        patch.setattr(StepRunner, "set_masks", recording_set)
        outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    cells = {(c.method.name, c.target_sparsity): c for c in matrix.expand()}
    return matrix, store, cells, captured


def _load(store: Store, run_id: str, name: str) -> dict[str, torch.Tensor]:
    return torch.load(store.run_dir(run_id) / name, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", NAMES)
def test_cell_hits_the_target_counted_from_the_weights(finished, name, target):
    matrix, store, cells, _ = finished
    cell = cells[(name, target)]
    result = store.result(cell.run_id)
    model, masks = _load(store, cell.run_id, "model.pt"), load_masks(store.run_dir(cell.run_id))
    zeros = sum(int((model[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert abs(zeros / total - target) <= 1e-3
    assert sum(int((~m).sum()) for m in masks.values()) == round(target * total)
    assert all((model[n][~m] == 0).all() for n, m in masks.items())
    assert result.sparsity["achieved_sparsity"] == pytest.approx(zeros / total)
    steps = (
        matrix.finetune.steps if name == "disparse-pretrained" else matrix.train.steps + matrix.finetune.steps
    )
    assert result.steps_method == steps and result.starts_from == METHODS.get(name).starts_from


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["disparse-static", "disparse-pretrained"])
def test_task_masks_are_stored_and_their_union_is_the_final_mask(finished, name, target):
    _, store, cells, _ = finished
    cell = cells[(name, target)]
    run_dir = store.run_dir(cell.run_id)
    final = load_masks(run_dir)
    per_task = {
        t: {n: torch.from_numpy(m) for n, m in ms.items()}
        for t, ms in read_task_masks(run_dir / TASK_MASKS).items()
    }
    tasks = cell.data.tasks
    assert set(per_task) == set(tasks)
    backbone = [n for n in final if n.startswith("backbone.")]
    for task in tasks:
        assert set(per_task[task]) == set(backbone) | {n for n in final if n.startswith(f"heads.{task}.")}
        for n in final:
            if n.startswith(f"heads.{task}."):
                assert torch.equal(per_task[task][n], final[n]), n  # a head keeps its own task's mask
    for n in backbone:
        union = torch.stack([per_task[t][n] for t in tasks]).any(0)
        assert torch.equal(union, final[n]), n  # a backbone weight survives if any task keeps it
    result = store.result(cell.run_id)
    assert 0.0 < result.method_state["keep_ratio"] < 1.0
    # The defaults that ran are recorded: the reference's Xavier scoring copy, its NYU-v2 criterion.
    assert cell.data.dataset == "nyuv2" and cell.method.params in ({"batches": 2}, {})
    if name == "disparse-static":
        assert result.method_state["scoring_init"] == "xavier"
    else:
        assert result.method_state["criterion"] == "magnitude"


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_pretrained_backbone_is_magnitude_above_the_smallest_task_threshold(finished, target):
    _, store, cells, _ = finished
    cell = cells[("disparse-pretrained", target)]
    dense = _load(store, cell.dense().run_id, "model.pt")
    final = load_masks(store.run_dir(cell.run_id))
    per_task = read_task_masks(store.run_dir(cell.run_id) / TASK_MASKS)
    tau = {
        t: min(float(dense[n].abs()[torch.from_numpy(m)].min()) for n, m in ms.items() if m.any())
        for t, ms in per_task.items()
    }
    for n, m in final.items():
        if n.startswith("backbone."):
            assert torch.equal(m, dense[n].abs() >= min(tau.values())), n


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_dynamic_keeps_the_exact_erk_counts_after_every_update(finished, target):
    _, store, cells, captured = finished
    cell = cells[("disparse-dynamic", target)]
    assert not (store.run_dir(cell.run_id) / TASK_MASKS).exists()  # no per-task keep mask in this variant
    model = build_model(cell)
    shapes = {n: tuple(p.shape) for n, p in model.prunable_parameters().items()}
    expected = erk_keep_counts(shapes, target, 0.9)
    total = sum(math.prod(s) for s in shapes.values())
    calls = captured[("disparse-dynamic", target)]
    # T = 6 + 2 = 8 steps, t_end = ⌊0.75 · 8⌋ = 6, delta_t = 2: the initial mask, then updates at 0, 2, 4.
    assert len(calls) == 4
    for counts in calls:
        assert counts == expected
        assert total - sum(counts.values()) == round(target * total)
    records = [
        json.loads(line) for line in (store.run_dir(cell.run_id) / "log.jsonl").read_text().splitlines()
    ]
    updates = [r for r in records if "disparse.prune_rate" in r]
    assert [r["step"] for r in updates] == [0, 2, 4]
    # α_t = ½ · 0.5 · (1 + cos(π t / 6)): 0.5, 0.375, 0.125.
    assert [r["disparse.prune_rate"] for r in updates] == pytest.approx([0.5, 0.375, 0.125])
    assert all(r["disparse.sparsity"] == pytest.approx(round(target * total) / total) for r in updates)
    assert sum(r["disparse.changed"] for r in updates) > 0
    final = load_masks(store.run_dir(cell.run_id))
    initial = DisparseDynamic(cell.method.parsed_params()).initial_masks(
        MethodContext(model=model, spec=cell, train_set=None, device=torch.device("cpu"))
    )
    assert any(not torch.equal(final[n], initial[n]) for n in final)  # the topology moved
    assert {n: int(m.sum()) for n, m in final.items()} == expected


def _fresh_ctx(store: Store, cell) -> MethodContext:
    model = build_model(cell)
    start = "model.pt" if METHODS.get(cell.method.name).starts_from == "dense" else "init.pt"
    model.load_state_dict(_load(store, cell.dense().run_id, start))
    return MethodContext(
        model=model,
        spec=cell,
        train_set=build_dataset(cell.data, store.root, "train", seed=cell.seed, protocol=cell.eval.protocol),
        device=torch.device("cpu"),
        dense_dir=store.run_dir(cell.dense().run_id),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["disparse-static", "disparse-pretrained"])
def test_same_seed_gives_the_same_selection(finished, name):
    _, store, cells, _ = finished
    cell = cells[(name, 0.7)]
    ctx = _fresh_ctx(store, cell)
    again = METHODS.get(name)(cell.method.parsed_params()).masks(ctx)
    stored = load_masks(store.run_dir(cell.run_id))
    assert again.keys() == stored.keys() and all(torch.equal(again[n].cpu(), stored[n]) for n in stored)
    stored_tasks = read_task_masks(store.run_dir(cell.run_id) / TASK_MASKS)
    for task, masks in ctx.task_masks.items():
        assert all(torch.equal(m, torch.from_numpy(stored_tasks[task][n])) for n, m in masks.items())


@pytest.mark.slow
def test_dynamic_same_seed_gives_identical_masks_and_metrics(finished, tmp_path):
    matrix, store, cells, _ = finished
    cell = cells[("disparse-dynamic", 0.7)]
    copy = Store(tmp_path / "copy")
    shutil.copytree(store.root, copy.root)
    shutil.rmtree(copy.run_dir(cell.run_id))  # keep the dense stage and the other cells; redo this one
    outcome = run_matrix(matrix, copy, show_progress=False)
    assert outcome.done == [cell.run_id] and outcome.failed == {}
    first, second = load_masks(store.run_dir(cell.run_id)), load_masks(copy.run_dir(cell.run_id))
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
    assert store.result(cell.run_id).metrics == copy.result(cell.run_id).metrics
