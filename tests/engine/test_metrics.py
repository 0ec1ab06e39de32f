"""Golden tests for the `standard`-protocol NYU-v2 metric accumulators, on hand-computed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlprune.engine.metrics import DepthMetric, NormalMetric, SegmentationMetric, make_metric
from mtlprune.vocabulary import METRICS

NYUV2_METRICS = METRICS["nyuv2"]


def nyuv2_metric(task: str):
    """A fresh standard-protocol accumulator of NYU-v2, as the dataset plugin chooses it."""
    return make_metric("nyuv2", task)


# ---------------------------------------------------------------------------------------------- segmentation


def _one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,H,W) labels -> (B,C,H,W) logits whose argmax is the label."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 5.0 - 1.0


# 3 classes, one 2×3 image; the pixel at (1,1) is ignored (255).
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 255, 0]]])
SEG_PRED = torch.tensor([[[0, 2, 1], [0, 1, 0]]])
# Valid (gt, pred) pairs: (0,0) (0,2) (1,1) (1,0) (0,0) -> 5 valid pixels, 3 correct.
# Confusion (rows gt, cols pred): gt0 -> [2, 0, 1]; gt1 -> [1, 1, 0]; gt2 -> [0, 0, 0].
# class 0: tp 2, gt 3, pred 3  -> union 3+3-2 = 4 -> IoU 1/2
# class 1: tp 1, gt 2, pred 1  -> union 2+1-1 = 2 -> IoU 1/2
#          (the ignored pixel predicted 1 does not count; counting it would give pred 2, union 3, IoU 1/3)
# class 2: tp 0, gt 0, pred 1  -> union 1         -> IoU 0
#          (present only in the prediction: counts under `standard`)
# miou = (1/2 + 1/2 + 0) / 3 = 1/3   (AdapMTL's TP>0 rule would drop class 2 and report 1/2)
# pixel_acc = 3 / 5 = 0.6


def test_segmentation_golden_labels_and_logits() -> None:
    for pred in (SEG_PRED, _one_hot_logits(SEG_PRED, 3)):
        m = SegmentationMetric(num_classes=3)
        m.update(pred, SEG_TARGET)
        out = m.compute()
        assert out["miou"] == pytest.approx(1 / 3, abs=1e-12)
        assert out["pixel_acc"] == pytest.approx(0.6, abs=1e-12)
        assert m.num_valid == 5
        assert m.confusion is not None
        assert m.confusion.tolist() == [[2, 0, 1], [1, 1, 0], [0, 0, 0]]


def test_segmentation_uint8_target_with_ignore() -> None:
    m = SegmentationMetric(num_classes=3)
    m.update(SEG_PRED.to(torch.uint8), SEG_TARGET.to(torch.uint8))
    assert m.compute()["miou"] == pytest.approx(1 / 3, abs=1e-12)


def test_segmentation_pooled_not_per_batch() -> None:
    # Batch A (1×1×2): target [0, 255], pred [0, 1] -> 1 valid pixel, 1 correct (per-batch acc 1.0).
    # Batch B (1×1×3): target [1, 1, 1], pred [0, 0, 0] -> 3 valid pixels, 0 correct (per-batch acc 0.0).
    # Pooled pixel_acc = 1 / 4 = 0.25; the mean of per-batch accuracies would be (1 + 0) / 2 = 0.5.
    # Pooled confusion: gt0 -> [1, 0]; gt1 -> [3, 0].
    # class 0: tp 1, union 1 + 4 - 1 = 4 -> 1/4; class 1: tp 0, union 3 -> 0; miou = 1/8.
    m = SegmentationMetric(num_classes=2)
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 255]]]))
    m.update(torch.tensor([[[0, 0, 0]]]), torch.tensor([[[1, 1, 1]]]))
    out = m.compute()
    assert out["pixel_acc"] == pytest.approx(0.25, abs=1e-12)
    assert out["miou"] == pytest.approx(0.125, abs=1e-12)


def test_segmentation_errors() -> None:
    m = SegmentationMetric(num_classes=3)
    with pytest.raises(ValueError, match="target label 7"):
        m.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[0, 7]]]))
    with pytest.raises(ValueError, match="target label -1"):
        m.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[0, -1]]]))
    with pytest.raises(ValueError, match="predicted label 3"):
        m.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match=r"\(1, 2, 3\).*\(1, 2, 2\)"):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 3\).*\(1, 2, 2\)"):
        m.update(torch.zeros(1, 3, 2, 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="4 channels"):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        m.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="no valid pixels were seen"):
        m.compute()
    # Only ignored pixels (a 255 prediction there is harmless): still nothing valid.
    m.update(torch.full((1, 2, 2), 255), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="segment_semantic: no valid pixels"):
        m.compute()
    with pytest.raises(ValueError, match="collides"):
        SegmentationMetric(num_classes=3, ignore_index=1)


def test_segmentation_reset() -> None:
    m = SegmentationMetric(num_classes=3)
    m.update(SEG_PRED, SEG_TARGET)
    m.reset()
    with pytest.raises(ValueError, match="no valid pixels"):
        m.compute()
    m.update(SEG_TARGET.clamp(max=2), SEG_TARGET.clamp(max=2))  # perfect on the 6 pixels (255 -> class 2)
    assert m.compute() == {"miou": 1.0, "pixel_acc": 1.0}


# ---------------------------------------------------------------------------------------------------- normals

# uint8 cannot encode an exact 0 component (it would need v = 127.5), so the golden targets use
# v = (0, 0, 0), which decodes to n = (-1, -1, -1), direction u = -(1, 1, 1)/√3.
U = -torch.ones(3, dtype=torch.float64) / math.sqrt(3.0)
W = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2.0)  # ⟂ u


def _normal_batch(preds: list[torch.Tensor], targets: list[tuple[int, int, int]]) -> tuple[torch.Tensor, ...]:
    """One 1×N image: preds as (1,3,1,N) float, targets as (1,3,1,N) uint8."""
    pred = torch.stack(preds, dim=1).reshape(1, 3, 1, len(preds)).float()
    target = torch.tensor(targets, dtype=torch.uint8).T.reshape(1, 3, 1, len(targets))
    return pred, target


def test_normals_golden_angles() -> None:
    # Valid pixels, target u: pred u -> 0°, pred -u -> 180°, pred w -> 90°, pred 3·(u + w) -> 45° (any scale).
    # Last pixel: target (255,255,255) is invalid and excluded, whatever its prediction.
    pred, target = _normal_batch([U, -U, W, 3 * (U + W), U], [(0, 0, 0)] * 4 + [(255, 255, 255)])
    m = NormalMetric()
    m.update(pred, target)
    out = m.compute()
    # mean = (0 + 180 + 90 + 45) / 4 = 78.75; median (even N=4) of 0,45,90,180 = (45 + 90)/2 = 67.5
    # within 11.25 / 22.5 / 30: only the 0° pixel -> 1/4 = 25 %
    assert m.num_valid == 4
    assert out["mean"] == pytest.approx(78.75, abs=1e-5)
    assert out["median"] == pytest.approx(67.5, abs=1e-3)
    assert out["within_11_25"] == out["within_22_5"] == out["within_30"] == 25.0


def test_normals_zero_prediction_is_90_degrees_and_odd_median() -> None:
    # Same four pixels plus a zero prediction: eps-guarded normalisation keeps it with cos = 0 -> 90°.
    # Angles 0, 180, 90, 45, 90: mean = 405 / 5 = 81; median (odd N=5) of 0,45,90,90,180 = 90.
    pred, target = _normal_batch([U, -U, W, U + W, torch.zeros(3, dtype=torch.float64)], [(0, 0, 0)] * 5)
    m = NormalMetric()
    m.update(pred, target)
    out = m.compute()
    assert out["mean"] == pytest.approx(81.0, abs=1e-5)
    assert out["median"] == pytest.approx(90.0, abs=1e-3)
    assert out["within_30"] == pytest.approx(20.0)


def test_normals_partly_255_target_is_valid() -> None:
    # (255, 255, 0) decodes to (1, 1, -1): one channel below 255, so the pixel is valid under `standard`
    # (AdapMTL drops any pixel with a channel = 255). Pred (1, 1, -1) -> 0°; the median is clipped to the
    # observed [min, max] = [0, 0], so it is exactly 0 rather than the bin centre 0.0005.
    pred = torch.tensor([1.0, 1.0, -1.0]).reshape(1, 3, 1, 1)
    target = torch.tensor([255, 255, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
    m = NormalMetric()
    m.update(pred, target)
    out = m.compute()
    assert out["mean"] == pytest.approx(0.0, abs=1e-5)
    assert out["median"] == 0.0
    assert out["within_11_25"] == 100.0


def _numpy_angles(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Independent reference: decode, normalise and take arccos in numpy (valid pixels only)."""
    g = target.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    p = pred.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    valid = ~(g == 255).all(axis=1)
    g = g[valid] / 127.5 - 1.0
    p = p[valid]
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return np.degrees(np.arccos(np.clip((g * p).sum(axis=1), -1.0, 1.0)))


@pytest.mark.parametrize("n_pixels", [1, 2, 999, 1000])
def test_normals_histogram_median_matches_numpy(n_pixels: int) -> None:
    gen = torch.Generator().manual_seed(n_pixels)
    target = torch.randint(0, 256, (1, 3, 1, n_pixels), generator=gen).to(torch.uint8)
    target[..., 0] = 0  # keep the first pixel valid
    pred = torch.randn(1, 3, 1, n_pixels, generator=gen)
    m = NormalMetric()
    m.update(pred, target)
    out = m.compute()
    ref = _numpy_angles(pred.numpy(), target.numpy())
    assert m.num_valid == ref.size
    # Documented bound: within half a bin (0.0005°) of numpy's median (mean of the middle two for even N).
    assert abs(out["median"] - float(np.median(ref))) <= 0.5 * NormalMetric.BIN_WIDTH + 1e-9
    assert out["mean"] == pytest.approx(float(ref.mean()), rel=1e-9, abs=1e-9)
    assert out["within_22_5"] == pytest.approx(100.0 * float((ref < 22.5).mean()))


def test_normals_errors_and_empty() -> None:
    m = NormalMetric()
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 2\).*\(1, 3, 2, 3\)"):
        m.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3, dtype=torch.uint8))
    m.update(torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))  # all invalid
    with pytest.raises(ValueError, match="normal: no valid pixels were seen"):
        m.compute()


# ------------------------------------------------------------------------------------------------------ depth


def test_depth_golden_negative_prediction_fails_delta_but_counts_in_errors() -> None:
    # pixel  g     p      |p-g|  |p-g|/g  max(p/g, g/p)             δ<1.25  δ<1.5625  δ<1.953125
    #   a    1     1.25   0.25   0.25     1.25 (not < 1.25: strict)   no      yes       yes
    #   b    2     1      1      0.5      2                           no      no        no
    #   c    4    -1      5      1.25     p <= 0 -> failure           no      no        no
    #   d    2     2      0      0        1                           yes     yes       yes
    #   e    1     1.9    0.9    0.9      1.9                         no      no        yes
    #   invalid targets: 0, nan, inf, -1 (their predictions must not matter)
    # N = 5: abs_err = (0.25+1+5+0+0.9)/5 = 7.15/5 = 1.43; rel_err = (0.25+0.5+1.25+0+0.9)/5 = 2.9/5 = 0.58
    # δ1 = 1/5 = 20 %, δ2 = 2/5 = 40 %, δ3 = 3/5 = 60 %.
    # (The reference code's max(-1/4, 4/-1) = -0.25 < 1.25 would count pixel c as a success everywhere.)
    g = torch.tensor([1.0, 2.0, 4.0, 2.0, 1.0, 0.0, math.nan, math.inf, -1.0]).reshape(1, 1, 1, 9)
    p = torch.tensor([1.25, 1.0, -1.0, 2.0, 1.9, 5.0, 5.0, 5.0, 5.0]).reshape(1, 1, 1, 9)
    m = DepthMetric()
    m.update(p, g)
    out = m.compute()
    assert m.num_valid == 5
    assert out["abs_err"] == pytest.approx(1.43, rel=1e-6)
    assert out["rel_err"] == pytest.approx(0.58, rel=1e-6)
    assert out["delta_1_25"] == pytest.approx(20.0)
    assert out["delta_1_25_2"] == pytest.approx(40.0)
    assert out["delta_1_25_3"] == pytest.approx(60.0)


def test_depth_zero_prediction_is_failure() -> None:
    m = DepthMetric()
    m.update(torch.zeros(1, 1, 1, 2), torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2))
    out = m.compute()
    # abs_err = (1 + 2)/2 = 1.5; rel_err = (1 + 1)/2 = 1; no pixel within any threshold.
    assert out["abs_err"] == pytest.approx(1.5)
    assert out["rel_err"] == pytest.approx(1.0)
    assert out["delta_1_25_3"] == 0.0


def test_depth_pooled_not_per_batch() -> None:
    # Batch A: 1 valid pixel, error 1 (per-batch abs_err 1). Batch B: 3 valid pixels, error 0 (+1 invalid).
    # Pooled abs_err = 1/4 = 0.25; the mean of per-batch values would be 0.5.
    m = DepthMetric()
    m.update(torch.tensor([2.0]).reshape(1, 1, 1, 1), torch.tensor([1.0]).reshape(1, 1, 1, 1))
    m.update(torch.ones(1, 1, 2, 2), torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2))
    assert m.compute()["abs_err"] == pytest.approx(0.25)


def test_depth_errors_and_empty() -> None:
    m = DepthMetric()
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 4, 4\)"):
        m.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="depth_zbuffer: no valid pixels were seen"):
        m.compute()


# ------------------------------------------------------------------------------------ invariance to batching


def _random_batch(task: str, seed: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = 3, 4
    if task == "segment_semantic":
        target = torch.randint(0, 41, (batch, h, w), generator=gen)
        target[target == 40] = 255
        return torch.randn(batch, 40, h, w, generator=gen), target
    if task == "normal":
        target = torch.randint(0, 256, (batch, 3, h, w), generator=gen).to(torch.uint8)
        target[:, :, 0, 0] = 255  # one invalid pixel per image
        return torch.randn(batch, 3, h, w, generator=gen), target
    target = torch.rand(batch, 1, h, w, generator=gen) * 10
    target[:, :, 0, :2] = 0.0  # invalid
    return torch.randn(batch, 1, h, w, generator=gen) + 5, target


@settings(max_examples=30, deadline=None)
@given(
    task=st.sampled_from(sorted(NYUV2_METRICS)),
    seed=st.integers(0, 2**16),
    batch=st.integers(2, 6),
    data=st.data(),
)
def test_split_updates_equal_one_update(task: str, seed: int, batch: int, data: st.DataObject) -> None:
    split = data.draw(st.integers(1, batch - 1))
    pred, target = _random_batch(task, seed, batch)
    whole, parts = nyuv2_metric(task), nyuv2_metric(task)
    whole.update(pred, target)
    parts.update(pred[:split], target[:split])
    parts.update(pred[split:], target[split:])
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


# -------------------------------------------------------------------------------------------------- factory


def test_factory_and_vocabulary_names() -> None:
    assert isinstance(nyuv2_metric("segment_semantic"), SegmentationMetric)
    assert nyuv2_metric("segment_semantic").num_classes == 40
    assert isinstance(nyuv2_metric("normal"), NormalMetric)
    assert isinstance(nyuv2_metric("depth_zbuffer"), DepthMetric)
    with pytest.raises(
        KeyError,
        match=r"no metric for task 'keypoints2d' of dataset 'nyuv2'; "
        r"known: \['depth_zbuffer', 'normal', 'segment_semantic'\]",
    ):
        nyuv2_metric("keypoints2d")
    # compute() keys are exactly the vocabulary's metric names, in reporting order.
    for task, (pred, target) in {t: _random_batch(t, 0, 2) for t in NYUV2_METRICS}.items():
        m = nyuv2_metric(task)
        m.update(pred, target)
        assert list(m.compute()) == list(NYUV2_METRICS[task]), task


def test_update_accepts_tensors_that_require_grad() -> None:
    pred, target = _random_batch("depth_zbuffer", 1, 2)
    m = DepthMetric()
    m.update(pred.requires_grad_(), target)
    assert math.isfinite(m.compute()["abs_err"])
