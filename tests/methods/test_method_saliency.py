"""SNIP, GraSP and SynFlow (methods/saliency.py): scores against closed forms, then end to end.

Toy networks are hand-built MTLModels with fixed weights and batches; the end-to-end part runs the three
methods on the tiny matrix once (short budgets) and re-derives every mask from a fresh context.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlprune.methods.saliency  # noqa: F401  (registers snip, grasp, synflow)
from mtlprune.engine.build import build_model
from mtlprune.engine.context import MethodContext
from mtlprune.engine.data import build_dataset
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import apply_masks, select_masks
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.saliency import (
    Grasp,
    GraspParams,
    Snip,
    SnipParams,
    Synflow,
    SynflowParams,
    grasp_ranking,
    grasp_scores,
    snip_scores,
    synflow_scores,
    synflow_sparsity,
)
from mtlprune.registry import METHODS
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix, tiny_matrix_dict

TASK = "depth_zbuffer"


def _mse(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    return 0.5 * ((outputs[TASK] - batch[TASK]) ** 2).mean()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FakeCtx:
    """The slice of MethodContext the saliency methods use, on a toy model and one fixed batch."""

    def __init__(self, model: MTLModel, batch: dict[str, Any], target: float, crop=(1, 1)) -> None:
        self.model, self.batch, self.target = model, batch, target
        self.spec = SimpleNamespace(data=SimpleNamespace(crop=crop))
        self.logs: list[dict[str, Any]] = []
        self.selections: list[tuple[float, dict[str, torch.Tensor]]] = []
        self.masks = None
        self.trained: list[tuple[Any, str]] = []

    def batches(self, n: int, batch_size: int | None = None, salt: int = 0):
        for _ in range(n):
            yield self.batch

    def task_losses(self, outputs, batch):
        return {TASK: _mse(outputs, batch)}

    def total_loss(self, losses):
        return sum(losses.values())

    def prunable(self):
        return self.model.prunable_parameters()

    def component_of(self, name: str) -> str:
        return self.model.component_of(name)

    def select_masks(self, scores, scope="global", target=None, current=None):
        target = self.target if target is None else target
        masks = select_masks(scores, target, scope, component_of=self.component_of, current=current)
        self.selections.append((target, masks))
        return masks

    def apply_masks(self, masks):
        apply_masks(self.prunable(), masks)
        self.masks = masks

    def sparse_training_spec(self):
        return "sparse-spec"

    def train(self, spec=None, *, phase="train", **_: Any) -> int:
        self.trained.append((spec, phase))
        return 0

    def log(self, **scalars: Any) -> None:
        self.logs.append(scalars)


# ------------------------------------------------------------------------------------------------ SNIP


def _bn_toy() -> tuple[MTLModel, list[dict[str, Any]]]:
    """Conv 3→2 (c1) + BN (batch statistics) + ReLU, dropout + conv 2→1 (c2): fixed weights and batches."""
    g = torch.Generator().manual_seed(3)
    model = MTLModel(
        backbone=nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()),
        heads={TASK: nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 1, 1, bias=False))},
    ).double()
    with torch.no_grad():
        model.backbone[0].weight.copy_(torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64))
        model.backbone[1].weight.copy_(torch.tensor([1.5, -0.7], dtype=torch.float64))
        model.backbone[1].bias.copy_(torch.tensor([0.3, 0.2], dtype=torch.float64))
        model.heads[TASK][1].weight.copy_(torch.randn(1, 2, 1, 1, generator=g, dtype=torch.float64))
    batches = [
        {
            "input": torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64),
            TASK: torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64),
        }
        for _ in range(2)
    ]
    return model, batches


def _toy_loss(model: MTLModel, w1: torch.Tensor, w2: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """The toy's loss written out with explicit conv weights (BN with batch statistics, dropout off)."""
    bn = model.backbone[1]
    h = F.conv2d(batch["input"], w1)
    h = F.batch_norm(h, None, None, bn.weight.detach(), bn.bias.detach(), training=True, eps=bn.eps)
    return _mse({TASK: F.conv2d(F.relu(h), w2)}, batch)


def _toy_weights(model: MTLModel) -> tuple[torch.Tensor, torch.Tensor]:
    return model.backbone[0].weight.detach(), model.heads[TASK][1].weight.detach()


def test_snip_golden_hand_computed_case():
    # out = w · x per pixel with x = (1, 2, 4) everywhere; L = mean(out) → ∂L/∂c_j = w_j x_j.
    model = MTLModel(backbone=nn.Identity(), heads={TASK: nn.Conv2d(3, 1, 1, bias=False)})
    with torch.no_grad():
        model.heads[TASK].weight.copy_(torch.tensor([2.0, -3.0, 0.5]).view(1, 3, 1, 1))
    x = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    scores = snip_scores(model, [{"input": x}], lambda out, b: out[TASK].mean())
    assert scores[f"heads.{TASK}.weight"].flatten().tolist() == [2.0, 6.0, 2.0]


@pytest.mark.parametrize("n_batches", [1, 2])
def test_snip_equals_direct_connection_sensitivity(n_batches):
    model, batches = _bn_toy()
    before = _state(model)
    scores = snip_scores(model, batches[:n_batches], _mse)
    w1, w2 = _toy_weights(model)

    def total(c1, c2):  # multiplicative masks c on the two conv weights
        return sum(_toy_loss(model, w1 * c1, w2 * c2, b) for b in batches[:n_batches])

    d1, d2 = torch.func.grad(total, argnums=(0, 1))(torch.ones_like(w1), torch.ones_like(w2))
    torch.testing.assert_close(scores["backbone.0.weight"], d1.abs(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scores[f"heads.{TASK}.1.weight"], d2.abs(), rtol=1e-12, atol=1e-14)
    # Scoring changed nothing the training starts from: weights, BN running statistics, counters, grads.
    assert _same_state(_state(model), before)
    assert all(p.grad is None for p in model.parameters()) and model.training


# ----------------------------------------------------------------------------------------------- GraSP


def _linear_toy(seed: int = 5) -> tuple[MTLModel, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    model = MTLModel(backbone=nn.Identity(), heads={TASK: nn.Conv2d(4, 1, 1, bias=False)}).double()
    with torch.no_grad():
        model.heads[TASK].weight.copy_(torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64))
    batch = {
        "input": torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64),
        TASK: torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64),
    }
    return model, batch


def _grasp_closed_form(model: MTLModel, batch: dict[str, Any]) -> torch.Tensor:
    """L = ½ mean_p (w·x_p − y_p)²: g = Xᵀ(Xw − y)/N, H = XᵀX/N, S = −w ⊙ (H g)."""
    w = model.heads[TASK].weight.detach().flatten()
    x = batch["input"].permute(0, 2, 3, 1).reshape(-1, 4)
    y = batch[TASK].flatten()
    n = x.shape[0]
    grad = x.T @ (x @ w - y) / n
    hess = x.T @ x / n
    return -(w * (hess @ grad))


def test_grasp_matches_closed_form_hessian_gradient_product():
    model, batch = _linear_toy()
    scores = grasp_scores(model, [batch], _mse)
    torch.testing.assert_close(
        scores[f"heads.{TASK}.weight"].flatten(), _grasp_closed_form(model, batch), rtol=1e-12, atol=1e-14
    )


def test_grasp_matches_autograd_hvp_on_a_two_layer_net_with_bn():
    model, batches = _bn_toy()
    before = _state(model)
    scores = grasp_scores(model, batches, _mse)
    w1, w2 = _toy_weights(model)

    def loss(a, b):
        return sum(_toy_loss(model, a, b, batch) for batch in batches)

    g = torch.func.grad(loss, argnums=(0, 1))(w1, w2)
    _, hg = torch.autograd.functional.hvp(loss, (w1, w2), g)
    torch.testing.assert_close(scores["backbone.0.weight"], -w1 * hg[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(scores[f"heads.{TASK}.1.weight"], -w2 * hg[1], rtol=1e-10, atol=1e-13)
    assert _same_state(_state(model), before)


def test_grasp_temperature_divides_only_the_segmentation_logits():
    g = torch.Generator().manual_seed(1)
    model = MTLModel(
        backbone=nn.Conv2d(3, 4, 1, bias=False),
        heads={"segment_semantic": nn.Conv2d(4, 5, 1, bias=False), TASK: nn.Conv2d(4, 1, 1, bias=False)},
    ).double()
    batch = {
        "input": torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64),
        "segment_semantic": torch.randint(0, 5, (2, 2, 2), generator=g),
        TASK: torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64),
    }

    def loss(out, b):
        return F.cross_entropy(out["segment_semantic"], b["segment_semantic"]) + _mse(out, b)

    def manual(out, b):  # the same loss with the logits divided by hand
        return loss({"segment_semantic": out["segment_semantic"] / 200.0, TASK: out[TASK]}, b)

    tempered = grasp_scores(model, [batch], loss, temperature=200.0)
    by_hand = grasp_scores(model, [batch], manual, temperature=1.0)
    plain = grasp_scores(model, [batch], loss, temperature=1.0)
    for name in tempered:
        torch.testing.assert_close(tempered[name], by_hand[name], rtol=1e-12, atol=1e-16)
    assert not torch.allclose(tempered["backbone.weight"], plain["backbone.weight"])


def test_grasp_ranking_removes_the_highest_scores():
    scores = {"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, 2.0])}
    masks = select_masks(grasp_ranking(scores), 0.5)
    assert masks["a"].tolist() == [False, True] and masks["b"].tolist() == [True, False]


def test_grasp_method_prunes_the_highest_closed_form_scores_and_trains_sparse():
    model, batch = _linear_toy(seed=11)
    init = model.heads[TASK].weight.detach().clone()
    closed = _grasp_closed_form(model, batch)
    ctx = FakeCtx(model, batch, target=0.5)
    # Default temperature 200: a regression head has no logits, so the closed form (no T) still holds.
    Grasp(GraspParams()).run(ctx)
    keep = ctx.masks[f"heads.{TASK}.weight"].flatten()
    expected = torch.ones(4, dtype=torch.bool)
    expected[torch.argsort(closed, descending=True)[:2]] = False
    assert keep.tolist() == expected.tolist()
    assert torch.equal(model.heads[TASK].weight.detach().flatten(), (init.flatten() * expected))
    assert ctx.trained == [("sparse-spec", "train")]
    assert ctx.logs[0]["grasp.sparsity"] == 0.5


def test_snip_method_keeps_the_top_sensitivities():
    model, batch = _linear_toy(seed=2)
    scores = snip_scores(model, [batch], _mse)[f"heads.{TASK}.weight"].flatten()
    ctx = FakeCtx(model, batch, target=0.25)
    Snip(SnipParams()).run(ctx)
    keep = ctx.masks[f"heads.{TASK}.weight"].flatten()
    assert keep.sum() == 3 and not keep[torch.argmin(scores)]
    assert ctx.trained == [("sparse-spec", "train")]


# --------------------------------------------------------------------------------------------- SynFlow


def _two_layer(seed: int = 0) -> MTLModel:
    g = torch.Generator().manual_seed(seed)
    model = MTLModel(
        backbone=nn.Sequential(nn.Flatten(), nn.Linear(3, 4, bias=False)),
        heads={TASK: nn.Linear(4, 2, bias=False)},
    )
    with torch.no_grad():
        model.backbone[1].weight.copy_(torch.randn(4, 3, generator=g))
        model.heads[TASK].weight.copy_(torch.randn(2, 4, generator=g))
    return model


def test_synflow_two_layer_closed_form_and_conservation():
    model = _two_layer()
    before = _state(model)
    a1 = model.backbone[1].weight.detach().double().abs()
    a2 = model.heads[TASK].weight.detach().double().abs()
    scores = synflow_scores(model, (1, 3, 1, 1))
    # R = 1ᵀ|W2||W1|1: ∂R/∂|W1|_ij = Σ_k |W2|_ki, ∂R/∂|W2|_ki = Σ_j |W1|_ij.
    torch.testing.assert_close(scores["backbone.1.weight"], a1 * a2.sum(0)[:, None], rtol=1e-14, atol=0)
    torch.testing.assert_close(scores[f"heads.{TASK}.weight"], a2 * a1.sum(1)[None, :], rtol=1e-14, atol=0)
    r = float(a2.sum(0) @ a1.sum(1))
    for s in scores.values():
        assert s.dtype == torch.float64 and (s >= 0).all()
        assert abs(float(s.sum()) - r) <= 1e-9 * r
    assert _same_state(_state(model), before)


def test_synflow_masked_weights_score_zero_and_leave_the_flow():
    model = _two_layer(seed=4)
    a1 = model.backbone[1].weight.detach().double().abs()
    a2 = model.heads[TASK].weight.detach().double().abs()
    m1 = torch.ones(4, 3, dtype=torch.bool)
    m1[1] = False  # hidden unit 1 loses every input
    masks = {"backbone.1.weight": m1, f"heads.{TASK}.weight": torch.ones(2, 4, dtype=torch.bool)}
    scores = synflow_scores(model, (1, 3, 1, 1), masks=masks)
    b1 = a1 * m1
    torch.testing.assert_close(scores["backbone.1.weight"], b1 * a2.sum(0)[:, None], rtol=1e-14, atol=0)
    torch.testing.assert_close(scores[f"heads.{TASK}.weight"], a2 * b1.sum(1)[None, :], rtol=1e-14, atol=0)
    assert (scores[f"heads.{TASK}.weight"][:, 1] == 0).all()


def test_synflow_conservation_through_conv_bn_relu_layers():
    torch.manual_seed(0)
    model = MTLModel(
        backbone=nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 5, 1, bias=False),
        ),
        heads={TASK: nn.Conv2d(5, 2, 3, padding=1, bias=False)},
    )
    with torch.no_grad():
        model.backbone[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, -0.25]))  # signs removed by |·|
    scores = synflow_scores(model, (1, 3, 5, 6))
    sums = [float(s.sum()) for s in scores.values()]
    assert len(sums) == 3 and max(sums) - min(sums) <= 1e-9 * max(sums)


def test_synflow_head_normalization_divides_each_head_by_its_size():
    torch.manual_seed(1)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3, 4, bias=False))
    heads = {"a": nn.Linear(4, 2, bias=False), "b": nn.Linear(4, 5, bias=False)}
    both = synflow_scores(MTLModel(backbone, heads), (1, 3, 1, 1), head_normalization=True)
    only_a = synflow_scores(MTLModel(backbone, {"a": heads["a"]}), (1, 3, 1, 1))
    only_b = synflow_scores(MTLModel(backbone, {"b": heads["b"]}), (1, 3, 1, 1))
    torch.testing.assert_close(
        both["backbone.1.weight"], only_a["backbone.1.weight"] / 2 + only_b["backbone.1.weight"] / 5
    )
    torch.testing.assert_close(both["heads.a.weight"], only_a["heads.a.weight"] / 2)
    torch.testing.assert_close(both["heads.b.weight"], only_b["heads.b.weight"] / 5)


def test_synflow_overflow_raises_a_clear_error():
    model = _two_layer().double()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e200)  # R = 24 · 1e400 overflows float64
    with pytest.raises(FloatingPointError, match="not finite in float64"):
        synflow_scores(model, (1, 3, 1, 1))


def test_synflow_schedule_is_exponential_in_density_and_ends_on_the_target():
    n, target = 7, 0.7
    densities = [1 - synflow_sparsity(k, n, target) for k in range(1, n + 1)]
    assert densities == pytest.approx([(1 - target) ** (k / n) for k in range(1, n + 1)], rel=1e-15)
    assert synflow_sparsity(n, n, target) == target
    assert all(a > b for a, b in itertools.pairwise(densities))
    with pytest.raises(ValueError):
        synflow_sparsity(0, n, target)


def test_synflow_method_rounds_are_nested_and_exact():
    torch.manual_seed(2)
    model = MTLModel(
        backbone=nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()),
        heads={TASK: nn.Conv2d(6, 2, 1, bias=True)},
    )
    init = _state(model)
    ctx = FakeCtx(model, {}, target=0.8, crop=(4, 4))
    Synflow(SynflowParams(rounds=4)).run(ctx)
    n = sum(p.numel() for p in model.prunable_parameters().values())
    assert [t for t, _ in ctx.selections] == [synflow_sparsity(k, 4, 0.8) for k in range(1, 5)]
    previous = None
    for target, masks in ctx.selections:
        assert sum(int((~m).sum()) for m in masks.values()) == round(target * n)
        if previous is not None:  # pruned weights stay pruned
            assert all(not (m & ~previous[k]).any() for k, m in masks.items())
        previous = masks
    assert [r["synflow.round"] for r in ctx.logs if "synflow.round" in r] == [1, 2, 3, 4]
    for name, p in model.prunable_parameters().items():
        assert torch.equal(p.detach(), init[name] * ctx.masks[name])
    assert ctx.trained == [("sparse-spec", "train")]


# ------------------------------------------------------------------------------------------ end to end

TARGET = 0.7


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """snip, grasp and synflow (5 rounds) on the tiny matrix; the state each sparse training starts from."""
    data = tiny_matrix_dict()["datasets"][0] | {"crop": [16, 16]}  # 2×2 features: a fast CPU run
    matrix = tiny_matrix(
        datasets=[data],
        methods=[{"name": "snip"}, {"name": "grasp"}, {"name": "synflow", "params": {"rounds": 5}}],
        sparsities=[TARGET],
        train={"steps": 2, "batch_size": 4, "lr": 0.003},
        finetune={"steps": 1, "batch_size": 4},
        runtime={"device": "cpu", "save_cell_models": True},
    )
    store = Store(tmp_path_factory.mktemp("saliency"))
    starts: dict[str, dict[str, torch.Tensor]] = {}
    original = MethodContext.train

    def recording_train(self, spec=None, **kwargs):
        starts[self.spec.method.name] = _state(self.model)
        return original(self, spec, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodContext, "train", recording_train)
        outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}
    cells = {c.method.name: c for c in matrix.expand()}
    return matrix, store, cells, starts


def _load(store: Store, run_id: str, name: str) -> dict[str, torch.Tensor]:
    return torch.load(store.run_dir(run_id) / name, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_cell_reaches_the_target_with_zero_pruned_weights_and_at_init_budget(finished, name):
    matrix, store, cells, _ = finished
    cell = cells[name]
    assert METHODS.get(name).starts_from == "init"
    result = store.result(cell.run_id)
    model, masks = _load(store, cell.run_id, "model.pt"), load_masks(store.run_dir(cell.run_id))
    zeros = sum(int((model[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert abs(zeros / total - TARGET) <= 1e-3
    assert sum(int((~m).sum()) for m in masks.values()) == round(TARGET * total)
    assert all((model[n][~m] == 0).all() for n, m in masks.items())
    # At-init methods: no dense share, the sparse training gets dense + finetune steps (fairness rule).
    assert result.steps_total == result.steps_method == matrix.train.steps + matrix.finetune.steps == 3
    assert result.starts_from == "init"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_sparse_training_starts_from_the_dense_init_times_the_mask(finished, name):
    _, store, cells, starts = finished
    cell = cells[name]
    init = _load(store, cell.dense().run_id, "init.pt")
    masks = load_masks(store.run_dir(cell.run_id))
    start = starts[name]
    assert start.keys() == init.keys()
    for key, value in init.items():  # BN running statistics and counters included
        expected = value * masks[key] if key in masks else value
        assert torch.equal(start[key], expected), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_same_seed_gives_the_same_masks(finished, name):
    _, store, cells, _ = finished
    cell = cells[name]
    model = build_model(cell)
    model.load_state_dict(_load(store, cell.dense().run_id, "init.pt"))
    ctx = MethodContext(
        model=model,
        spec=cell,
        train_set=build_dataset(cell.data, store.root, "train", seed=cell.seed, protocol=cell.eval.protocol),
        device=torch.device("cpu"),
        dense_dir=store.run_dir(cell.dense().run_id),
    )
    method = METHODS.get(name)(cell.method.parsed_params())
    again = method.masks(ctx)
    stored = load_masks(store.run_dir(cell.run_id))
    assert again.keys() == stored.keys()
    assert all(torch.equal(again[n].cpu(), stored[n]) for n in stored)
