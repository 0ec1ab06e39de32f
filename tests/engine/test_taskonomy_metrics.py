"""Golden tests for the Tiny-Taskonomy losses, metric accumulators, vocabulary and ΔT (hand-computed).

Targets follow the loader's contract: seg int64 labels 0..16 (here fewer classes) with 255 = ignore; float
targets carry NaN on invalid pixels.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlprune.analysis.delta import delta_m, delta_t
from mtlprune.engine.metrics import (
    CosineNormalMetric,
    L1Metric,
    WeightedSegmentationMetric,
    make_metric,
)
from mtlprune.engine.tasks import make_losses, task_loss
from mtlprune.vocabulary import DIRECTIONS, HIGHER, LOWER, METRICS, direction

NAN = math.nan
LN2 = math.log(2.0)


def taskonomy_metric(task: str, class_weights=None):
    """A fresh standard-protocol accumulator of Tiny-Taskonomy, as the dataset plugin chooses it."""
    return make_metric("taskonomy", task, class_weights)


TASKS5 = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")

# ---------------------------------------------------------------------------------------------- segmentation

# 3 classes, one 2×2 image; (1,0) is ignored (255).
SEG_TARGET = torch.tensor([[[0, 1], [255, 2]]])
# Every valid pixel has logits [ln 2, 0, 0] -> softmax [2/4, 1/4, 1/4] -> argmax 0.
#   CE(y=0) = −ln(1/2) = ln 2;  CE(y=1) = CE(y=2) = −ln(1/4) = 2 ln 2.
# The ignored pixel gets logits [0, 100, 0] (CE of any class would be huge, and argmax 1): it must not count.
SEG_LOGITS = torch.tensor(
    [[[[LN2, LN2], [0.0, LN2]], [[0.0, 0.0], [100.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float32
)
WEIGHTS = torch.tensor([1.0, 2.0, 3.0])
# Weighted err = (1·ln2 + 2·2ln2 + 3·2ln2) / (1 + 2 + 3) = 11 ln2 / 6 ≈ 1.27076
# Unweighted   = (ln2 + 2ln2 + 2ln2) / 3 = 5 ln2 / 3 ≈ 1.15525   (what equal weights give)
SEG_ERR = 11 * LN2 / 6
# Confusion (valid pixels, pred always 0): gt0->0, gt1->0, gt2->0.
#   class 0: tp 1, union 1 + 3 − 1 = 3 -> 1/3;  class 1: tp 0, union 1 -> 0;  class 2: tp 0, union 1 -> 0
#   miou = (1/3 + 0 + 0) / 3 = 1/9   (the ignored pixel's prediction 1 does not count)
SEG_MIOU = 1 / 9


def test_segmentation_loss_is_class_weighted_ce_ignoring_255() -> None:
    loss = task_loss("taskonomy", "segment_semantic", SEG_LOGITS, SEG_TARGET, class_weights=WEIGHTS)
    assert float(loss) == pytest.approx(SEG_ERR, rel=1e-6)
    ref = F.cross_entropy(SEG_LOGITS, SEG_TARGET, weight=WEIGHTS, ignore_index=255)
    assert float(loss) == pytest.approx(float(ref), rel=1e-7)
    equal = task_loss("taskonomy", "segment_semantic", SEG_LOGITS, SEG_TARGET, class_weights=torch.ones(3))
    assert float(equal) == pytest.approx(5 * LN2 / 3, rel=1e-6)


def test_segmentation_loss_upsamples_and_survives_all_ignored() -> None:
    # A 1×1 prediction is upsampled (bilinear, constant) to 2×2: same CE as SEG_LOGITS' valid pixels.
    small = torch.tensor([LN2, 0.0, 0.0]).reshape(1, 3, 1, 1)
    loss = task_loss("taskonomy", "segment_semantic", small, SEG_TARGET, class_weights=WEIGHTS)
    assert float(loss) == pytest.approx(SEG_ERR, rel=1e-6)
    pred = SEG_LOGITS.clone().requires_grad_(True)
    loss = task_loss("taskonomy", "segment_semantic", pred, torch.full((1, 2, 2), 255), class_weights=WEIGHTS)
    loss.backward()
    assert float(loss.detach()) == 0.0 and pred.grad is not None and torch.all(pred.grad == 0)


def test_segmentation_metric_golden() -> None:
    m = taskonomy_metric("segment_semantic", WEIGHTS)
    assert isinstance(m, WeightedSegmentationMetric) and m.num_classes == 3
    m.update(SEG_LOGITS, SEG_TARGET)
    out = m.compute()
    assert list(out) == ["err", "miou", "pixel_acc"]
    assert out["err"] == pytest.approx(SEG_ERR, rel=1e-6)  # inputs are float32
    assert out["miou"] == pytest.approx(SEG_MIOU, rel=1e-12)
    assert out["pixel_acc"] == pytest.approx(1 / 3, rel=1e-12)  # only gt 0 of the 3 valid pixels is right
    assert m.num_valid == 3


def test_segmentation_err_is_pooled_not_batch_averaged() -> None:
    # Image A: the y=0 pixel alone (err ln2, weight 1). Image B: the y=1 and y=2 pixels (weights 2, 3).
    # Pooled: (1·ln2 + 2·2ln2 + 3·2ln2)/6 = 11ln2/6 — the same as one update of both.
    # The reference's per-batch mean would give (ln2 + (2·2ln2 + 3·2ln2)/5)/2 = (ln2 + 2ln2)/2 = 1.5 ln2.
    logits = torch.tensor([LN2, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 2).contiguous()
    m = WeightedSegmentationMetric(WEIGHTS)
    m.update(logits, torch.tensor([[[0, 255]]]))
    m.update(logits, torch.tensor([[[1, 2]]]))
    assert m.compute()["err"] == pytest.approx(SEG_ERR, rel=1e-6)
    assert m.compute()["err"] != pytest.approx(1.5 * LN2)


def test_segmentation_metric_needs_logits_weights_and_pixels() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        taskonomy_metric("segment_semantic")
    with pytest.raises(ValueError, match="positive"):
        WeightedSegmentationMetric(torch.tensor([1.0, 0.0]))
    m = WeightedSegmentationMetric(WEIGHTS)
    with pytest.raises(ValueError, match="logits"):
        m.update(SEG_TARGET, SEG_TARGET)
    with pytest.raises(ValueError, match="no valid pixels"):
        m.compute()
    m.update(SEG_LOGITS, torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="no valid pixels"):
        m.compute()
    with pytest.raises(ValueError, match="outside"):
        m.update(SEG_LOGITS, torch.tensor([[[0, 3], [255, 2]]]))  # 3 is not a class of 3


# --------------------------------------------------------------------------------------------------- normals

# One 1×4 image. Pixel a: g (0,0,1), p (0,0,2) -> cos 1, 0°. Pixel b: g (1,0,0), p (1,1,0) -> cos 1/√2, 45°.
# Pixel c: all-NaN target; pixel d: NaN in one channel only — both invalid (whatever the prediction).
NORMAL_TARGET = torch.tensor([[[[0.0, 1.0, NAN, 0.5]], [[0.0, 0.0, NAN, NAN]], [[1.0, 0.0, NAN, 0.5]]]])
NORMAL_PRED = torch.tensor([[[[0.0, 1.0, 1.0, -1.0]], [[0.0, 1.0, 0.0, 0.0]], [[2.0, 0.0, 0.0, 0.0]]]])
# cos_sim = (1 + 1/√2) / 2 ≈ 0.853553;  loss = 1 − cos_sim ≈ 0.146447
# mean angle = (0 + 45)/2 = 22.5;  median of 2 = mean of the two values (bin centres, clipped): 22.5 ± 0.0005
# within 11.25 / 22.5 / 30: only the 0° pixel -> 50 % each
COS = (1 + 1 / math.sqrt(2)) / 2


def test_normal_loss_golden_and_nan_safe_gradient() -> None:
    pred = NORMAL_PRED.clone().requires_grad_(True)
    loss = task_loss("taskonomy", "normal", pred, NORMAL_TARGET)
    assert float(loss.detach()) == pytest.approx(1 - COS, rel=1e-6)
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all())
    assert torch.all(pred.grad[..., 2:] == 0)  # invalid pixels get no gradient


def test_normal_metric_golden() -> None:
    m = taskonomy_metric("normal")
    assert isinstance(m, CosineNormalMetric)
    m.update(NORMAL_PRED, NORMAL_TARGET)
    out = m.compute()
    assert list(out) == list(METRICS["taskonomy"]["normal"])
    assert out["cos_sim"] == pytest.approx(COS, rel=1e-9)
    assert out["mean"] == pytest.approx(22.5, abs=1e-9)
    assert out["median"] == pytest.approx(22.5, abs=1e-3)
    assert out["within_11_25"] == out["within_22_5"] == out["within_30"] == pytest.approx(50.0)
    assert m.num_valid == 2


# ----------------------------------------------------------------------------------- depth, keypoints, edges

# One 2×2 map. |p − g| over finite targets: |0.4−0.5| = 0.1, |0.5−0.25| = 0.25, |0.1−0.1| = 0 (NaN skipped,
# even though its prediction 7 is far off). Mean = 0.35 / 3 ≈ 0.116667.
L1_TARGET = torch.tensor([[[[0.5, NAN], [0.25, 0.1]]]])
L1_PRED = torch.tensor([[[[0.4, 7.0], [0.5, 0.1]]]])
L1 = 0.35 / 3


@pytest.mark.parametrize(
    ("task", "name"), [("depth_zbuffer", "abs_err"), ("keypoints2d", "err"), ("edge_texture", "err")]
)
def test_l1_loss_and_metric_golden(task: str, name: str) -> None:
    pred = L1_PRED.clone().requires_grad_(True)
    loss = task_loss("taskonomy", task, pred, L1_TARGET)
    assert float(loss.detach()) == pytest.approx(L1, rel=1e-6)
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all()) and pred.grad[0, 0, 0, 1] == 0
    m = taskonomy_metric(task)
    assert isinstance(m, L1Metric)
    m.update(L1_PRED, L1_TARGET)
    expected = {name: pytest.approx(L1, rel=1e-6)}  # float32 inputs
    if task == "depth_zbuffer":
        # rel_err over finite targets with g > 0: (0.1/0.5 + 0.25/0.25 + 0/0.1) / 3 = 1.2 / 3 = 0.4
        expected["rel_err"] = pytest.approx(0.4, rel=1e-6)
    assert m.compute() == expected
    assert list(m.compute()) == list(METRICS["taskonomy"][task])


def test_float_losses_with_no_valid_pixel_are_zero_and_metrics_raise() -> None:
    for task, c in (("normal", 3), ("depth_zbuffer", 1), ("keypoints2d", 1), ("edge_texture", 1)):
        pred = torch.randn(1, c, 2, 2, requires_grad=True)
        target = torch.full((1, c, 2, 2), NAN)
        loss = task_loss("taskonomy", task, pred, target)
        loss.backward()
        assert float(loss.detach()) == (1.0 if task == "normal" else 0.0), task  # 1 − (empty mean := 0)
        assert pred.grad is not None and torch.all(pred.grad == 0), task
        m = taskonomy_metric(task)
        with pytest.raises(ValueError, match="no valid pixels"):
            m.compute()
        m.update(pred.detach(), target)
        with pytest.raises(ValueError, match="no valid pixels"):
            m.compute()


def test_float_metrics_reject_wrong_shapes_and_integer_targets() -> None:
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        taskonomy_metric("keypoints2d").update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="float"):
        taskonomy_metric("depth_zbuffer").update(
            torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="does not match"):
        taskonomy_metric("normal").update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))


# ---------------------------------------------------------------------------------------- batch invariance


def _batch(task: str, seed: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if task == "segment_semantic":
        logits = torch.randn(b, 3, 4, 5, generator=g)
        target = torch.randint(0, 3, (b, 4, 5), generator=g)
        target[torch.rand(b, 4, 5, generator=g) < 0.2] = 255
        return logits, target
    c = 3 if task == "normal" else 1
    pred = torch.randn(b, c, 4, 5, generator=g)
    target = torch.rand(b, c, 4, 5, generator=g) * 2 - 1
    invalid = torch.rand(b, 1, 4, 5, generator=g) < 0.3
    return pred, torch.where(invalid.expand_as(target), torch.full_like(target, NAN), target)


@settings(max_examples=25, deadline=None)
@given(
    task=st.sampled_from(TASKS5), seed=st.integers(0, 10_000), b=st.integers(2, 5), split=st.integers(1, 4)
)
def test_two_updates_equal_one_update(task: str, seed: int, b: int, split: int) -> None:
    split = min(split, b - 1)
    pred, target = _batch(task, seed, b)
    whole, parts = taskonomy_metric(task, WEIGHTS), taskonomy_metric(task, WEIGHTS)
    whole.update(pred, target)
    parts.update(pred[:split], target[:split])
    parts.update(pred[split:], target[split:])
    a, c = whole.compute(), parts.compute()
    assert list(a) == list(c) == list(METRICS["taskonomy"][task])
    for k in a:
        assert c[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k


def test_loss_and_metric_agree_on_one_batch() -> None:
    # The metric pools exactly what the loss averages: on a single batch they coincide.
    for task in TASKS5:
        pred, target = _batch(task, 7, 3)
        loss = float(
            task_loss("taskonomy", task, pred, target, class_weights=WEIGHTS if task == TASKS5[0] else None)
        )
        out = taskonomy_metric(task, WEIGHTS)
        out.update(pred, target)
        value = out.compute()[next(iter(METRICS["taskonomy"][task]))]
        expected = 1 - value if task == "normal" else value
        assert loss == pytest.approx(expected, rel=1e-5), task


# ----------------------------------------------------------------------------------- factories and wiring


def test_make_metric_and_make_losses_dispatch_and_fail_loudly() -> None:
    assert type(make_metric("nyuv2", "depth_zbuffer")).__name__ == "DepthMetric"
    assert isinstance(make_metric("taskonomy", "keypoints2d", WEIGHTS), L1Metric)
    with pytest.raises(ValueError, match="no class_weights"):
        make_metric("nyuv2", "segment_semantic", WEIGHTS)
    with pytest.raises(KeyError, match="cityscapes"):
        make_metric("cityscapes", "segment_semantic")
    with pytest.raises(KeyError, match="keypoints2d"):
        make_metric("nyuv2", "keypoints2d")
    assert set(make_losses("taskonomy", TASKS5, WEIGHTS)) == set(TASKS5)
    with pytest.raises(ValueError, match="class_weights"):
        make_losses("taskonomy", TASKS5)
    with pytest.raises(ValueError, match="class_weights"):
        make_losses("nyuv2", ["segment_semantic"], WEIGHTS)
    with pytest.raises(KeyError, match="keypoints2d"):
        make_losses("nyuv2", ["keypoints2d"])
    # Without segmentation, Taskonomy needs no weights, and ignores the ones its loader always carries.
    assert set(make_losses("taskonomy", ["normal", "edge_texture"])) == {"normal", "edge_texture"}
    assert set(make_losses("taskonomy", ["normal"], WEIGHTS)) == {"normal"}


class _TinyTaskonomy:
    """An in-memory stand-in for the Taskonomy loader: same keys, encodings and attributes."""

    registry_name = "taskonomy"
    class_weights = torch.linspace(0.5, 2.0, 17)

    def __init__(self, n: int = 4, size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.items: list[dict[str, Any]] = []
        for _ in range(n):
            hole = torch.rand(1, size, size, generator=g) < 0.2

            def with_nan(x: torch.Tensor, hole: torch.Tensor = hole) -> torch.Tensor:
                return torch.where(hole.expand_as(x), torch.full_like(x, NAN), x)

            seg = torch.randint(0, 17, (size, size), generator=g)
            seg[hole[0]] = 255
            self.items.append(
                {
                    "input": torch.randn(3, size, size, generator=g),
                    "segment_semantic": seg,
                    "normal": with_nan(torch.rand(3, size, size, generator=g) * 2 - 1),
                    "depth_zbuffer": with_nan(torch.rand(1, size, size, generator=g)),
                    "keypoints2d": with_nan(torch.rand(1, size, size, generator=g) * 2 - 1),
                    "edge_texture": with_nan(torch.rand(1, size, size, generator=g) * 2 - 1),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    def set_epoch(self, epoch: int) -> None:
        pass


def test_train_and_evaluate_on_taskonomy_targets() -> None:
    from mtlprune.engine.evaluate import evaluate
    from mtlprune.engine.models.resnet import deeplab_resnet34
    from mtlprune.engine.train import TrainingData, train
    from mtlprune.spec import TrainSpec

    torch.manual_seed(0)
    channels = {"segment_semantic": 17, "normal": 3, "depth_zbuffer": 1, "keypoints2d": 1, "edge_texture": 1}
    model = deeplab_resnet34(channels, width=0.125, head_width=0.03125)
    data = _TinyTaskonomy(n=2)
    seen: list[dict[str, float]] = []
    training = TrainingData(
        "taskonomy", data, torch.device("cpu"), val_set=data, selection="best_val", val_every=1
    )
    train(model, training, spec=TrainSpec(steps=1, batch_size=2), seed=0, on_step=lambda s, x: seen.append(x))
    assert len(seen) == 1 and all(math.isfinite(s["loss"]) and math.isfinite(s["val_loss"]) for s in seen)
    metrics = evaluate(model, data, 2, torch.device("cpu"))  # dataset and weights read from the test set
    expected = [f"{t}.{m}" for t in channels for m in METRICS["taskonomy"][t]]
    assert list(metrics) == expected
    assert all(math.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------------------------------------- vocabulary


def test_direction_table_is_consistent_across_datasets() -> None:
    assert set(METRICS["taskonomy"]) == set(TASKS5)
    for tasks in METRICS.values():
        for task, metrics in tasks.items():
            for metric, sign in metrics.items():
                assert sign in (HIGHER, LOWER)
                assert direction(f"{task}.{metric}") == DIRECTIONS[f"{task}.{metric}"] == sign
    # A column present in both datasets means the same thing in both.
    shared = {f"{t}.{m}" for t, ms in METRICS["nyuv2"].items() for m in ms} & {
        f"{t}.{m}" for t, ms in METRICS["taskonomy"].items() for m in ms
    }
    assert {"segment_semantic.miou", "normal.mean", "normal.within_30", "depth_zbuffer.abs_err"} <= shared
    expected = {
        "segment_semantic.err": LOWER,
        "segment_semantic.miou": HIGHER,
        "normal.cos_sim": HIGHER,
        "normal.mean": LOWER,
        "normal.median": LOWER,
        "normal.within_11_25": HIGHER,
        "depth_zbuffer.abs_err": LOWER,
        "keypoints2d.err": LOWER,
        "edge_texture.err": LOWER,
    }
    assert {c: direction(c) for c in expected} == expected
    with pytest.raises(KeyError, match="keypoints2d.err"):
        direction("keypoints2d.bogus")


# ---------------------------------------------------------------------------------------------------- ΔT

T_DENSE = {
    "segment_semantic.err": 0.50,
    "segment_semantic.miou": 0.25,
    "normal.cos_sim": 0.80,
    "keypoints2d.err": 0.20,
    "sparsity": 0.0,
}
T_PRUNED = {
    "segment_semantic.err": 0.60,
    "segment_semantic.miou": 0.30,
    "normal.cos_sim": 0.84,
    "keypoints2d.err": 0.25,
    "sparsity": 0.9,
}
# Taskonomy's ΔT uses one metric per task (DELTA_METRICS): seg err, normal cos_sim, keypoint err.
# seg:       err ↓: −100·(0.60−0.50)/0.50 = −20   (miou +20 is reported but does not enter ΔT)
# normal:    cos_sim ↑: +100·(0.84−0.80)/0.80 = +5
# keypoints: err ↓: −100·(0.25−0.20)/0.20 = −25
# ΔT = (−20 + 5 − 25)/3 = −40/3 ≈ −13.333;  Δm the same (one metric per task)


def test_taskonomy_delta_t_golden() -> None:
    tasks = ["segment_semantic", "normal", "keypoints2d"]
    out = delta_t(T_PRUNED, T_DENSE, tasks, dataset="taskonomy")
    assert out == {
        "delta_t": pytest.approx(-40 / 3),
        "delta_t.segment_semantic": pytest.approx(-20.0),
        "delta_t.normal": pytest.approx(5.0),
        "delta_t.keypoints2d": pytest.approx(-25.0),
    }
    assert delta_m(T_PRUNED, T_DENSE, tasks, dataset="taskonomy") == pytest.approx(-40 / 3)
    # A dense run without seg err has no ΔT metric for segmentation: a clear error, not a silent miou.
    with pytest.raises(ValueError, match=r"segment_semantic.*segment_semantic\.err"):
        delta_t(T_PRUNED, {"segment_semantic.miou": 0.25}, ["segment_semantic"], dataset="taskonomy")
    # Under the NYU vocabulary seg err is not a metric (only miou counts: +20), and keypoints2d is no task.
    assert delta_t(T_PRUNED, T_DENSE, ["segment_semantic"])["delta_t"] == pytest.approx(20.0)
    with pytest.raises(KeyError, match="keypoints2d"):
        delta_t(T_PRUNED, T_DENSE, ["keypoints2d"])
    with pytest.raises(KeyError, match="cityscapes"):
        delta_t(T_PRUNED, T_DENSE, ["keypoints2d"], dataset="cityscapes")


def test_a_vocabulary_is_checked_before_it_joins_the_tables() -> None:
    from mtlprune.vocabulary import Vocabulary, register_vocabulary

    seg = {"segment_semantic": {"miou": HIGHER}}
    with pytest.raises(ValueError, match="needs metrics with directions ±1"):
        Vocabulary(
            "bad",
            {"segment_semantic": {"miou": 2}},
            {"segment_semantic": ("miou",)},
            {"segment_semantic": "miou"},
        )
    with pytest.raises(ValueError, match="delta must name every task"):
        Vocabulary("bad", seg, {}, {"segment_semantic": "miou"})
    with pytest.raises(ValueError, match=r"delta metrics \('iou',\) of 'segment_semantic'"):
        Vocabulary("bad", seg, {"segment_semantic": ("iou",)}, {"segment_semantic": "miou"})
    with pytest.raises(ValueError, match="main metric 'acc' of 'segment_semantic' is not one of its metrics"):
        Vocabulary("bad", seg, {"segment_semantic": ("miou",)}, {"segment_semantic": "acc"})
    opposite = Vocabulary(
        "bad",
        {"segment_semantic": {"miou": LOWER}},
        {"segment_semantic": ("miou",)},
        {"segment_semantic": "miou"},
    )
    with pytest.raises(
        ValueError, match="column 'segment_semantic.miou' has the opposite direction elsewhere"
    ):
        register_vocabulary(opposite)
    assert "bad" not in METRICS  # nothing of a refused vocabulary is kept
    with pytest.raises(ValueError, match="a different vocabulary for dataset 'nyuv2' is already registered"):
        register_vocabulary(
            Vocabulary("nyuv2", seg, {"segment_semantic": ("miou",)}, {"segment_semantic": "miou"})
        )
