"""The two evaluation protocols: each quirk of ``adapmtl`` against ``standard`` on hand-computed arrays.

Every expected value below is worked out in the comment above it; ``mtlprune.engine.metrics.compute`` is the
public entry point, fed one batch (a tensor) or several (a list, in evaluation order).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mtlprune.engine.evaluate import resize_batch
from mtlprune.engine.metrics import ReferenceNormalMetric, compute, make_metric
from mtlprune.engine.metrics.standard import NormalMetric
from mtlprune.engine.tasks import task_loss
from mtlprune.spec import EvalSpec


def _logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B,H,W) labels → (B,C,H,W) logits whose argmax is the label (255 → class 0, it is ignored anyway)."""
    return F.one_hot(labels.clamp(max=classes - 1).long(), classes).permute(0, 3, 1, 2).float() * 10.0


# ------------------------------------------------------------------------------------------ segmentation

# One 1×4 image, 40 classes. gt [0, 0, 1, 2], pred [0, 1, 1, 0]:
#   class 0: TP 1, gt 2, pred 2 → union 3 → IoU 1/3
#   class 1: TP 1, gt 1, pred 2 → union 2 → IoU 1/2
#   class 2: TP 0, gt 1, pred 0 → union 1 → IoU 0
# standard (classes with union > 0): (1/3 + 1/2 + 0) / 3 = 5/18
# adapmtl (classes with TP > 0 only): (1/3 + 1/2) / 2 = 5/12
SEG_GT = torch.tensor([[[0, 0, 1, 2]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 0]]])


def test_miou_standard_counts_missed_classes_adapmtl_drops_them() -> None:
    logits = _logits(SEG_PRED, 40)
    assert compute("nyuv2", "segment_semantic", logits, SEG_GT)["miou"] == pytest.approx(5 / 18)
    assert compute("nyuv2", "segment_semantic", logits, SEG_GT, "adapmtl")["miou"] == pytest.approx(5 / 12)


# Batch A: two 1×2 images, gt [[0, 0], [1, 255]], pred [[0, 0], [0, 7]] → 3 valid pixels, 2 right: 2/3.
# Batch B: one 1×2 image, gt [1, 1], pred [1, 0] → 1/2.
# adapmtl: per-batch accuracy weighted by batch size: (2·2/3 + 1·1/2) / 3 = 11/18
# standard: pooled over pixels: (2 + 1) / 5 = 3/5, whatever the batching.
PIX_GT = [torch.tensor([[[0, 0]], [[1, 255]]]), torch.tensor([[[1, 1]]])]
PIX_PRED = [torch.tensor([[[0, 0]], [[0, 7]]]), torch.tensor([[[1, 0]]])]


def test_pixel_accuracy_batch_weighted_vs_pooled() -> None:
    logits = [_logits(p, 40) for p in PIX_PRED]
    ref = compute("nyuv2", "segment_semantic", logits, PIX_GT, "adapmtl")
    std = compute("nyuv2", "segment_semantic", logits, PIX_GT)
    assert ref["pixel_acc"] == pytest.approx(11 / 18)
    assert std["pixel_acc"] == pytest.approx(3 / 5)
    # One batch of all three images: both protocols agree on 3/5.
    one_gt = torch.cat(PIX_GT)
    one = compute("nyuv2", "segment_semantic", torch.cat(logits), one_gt, "adapmtl")
    assert one["pixel_acc"] == pytest.approx(3 / 5)


def test_taskonomy_seg_err_is_batch_weighted_under_adapmtl() -> None:
    # 3 classes, weights [1, 2, 3]; every valid pixel has logits [ln2, 0, 0] → CE(y=0) = ln2, else 2 ln2.
    # Batch A (1 image): one pixel y=0 → weighted mean ln2. Batch B (1 image): y=1 and y=2 →
    # (2·2ln2 + 3·2ln2) / 5 = 2 ln2. adapmtl: (ln2 + 2ln2)/2 = 1.5 ln2; standard pooled: 11 ln2 / 6.
    ln2 = math.log(2.0)
    weights = torch.tensor([1.0, 2.0, 3.0])
    logits = torch.tensor([ln2, 0.0, 0.0]).reshape(1, 3, 1, 1)
    preds = [logits.expand(1, 3, 1, 1).contiguous(), logits.expand(1, 3, 1, 2).contiguous()]
    gts = [torch.tensor([[[0]]]), torch.tensor([[[1, 2]]])]
    ref = compute("taskonomy", "segment_semantic", preds, gts, "adapmtl", class_weights=weights)
    std = compute("taskonomy", "segment_semantic", preds, gts, class_weights=weights)
    assert list(ref) == ["err", "miou", "pixel_acc"] == list(std)
    assert ref["err"] == pytest.approx(1.5 * ln2, rel=1e-6)
    assert std["err"] == pytest.approx(11 * ln2 / 6, rel=1e-6)


# --------------------------------------------------------------------------------------------- normals


def test_nyu_normals_raw_encoding_vs_decoded() -> None:
    # Target encoded (10, 0, 0). adapmtl normalises the raw encoding → direction (1, 0, 0); a prediction
    # (1, 0, 0) is then 0° off. standard decodes v/127.5 − 1 = (10/127.5 − 1, −1, −1) ≈ (−0.9216, −1, −1),
    # whose angle to (1, 0, 0) is arccos(−0.9216 / |d|) with |d| = sqrt(0.9216² + 2) ≈ 1.6883 → 123.08°.
    target = torch.tensor([10, 0, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
    pred = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    ref = compute("nyuv2", "normal", pred, target, "adapmtl")
    std = compute("nyuv2", "normal", pred, target)
    d = 10 / 127.5 - 1
    expected = math.degrees(math.acos(d / math.sqrt(d * d + 2)))
    assert ref["mean"] == pytest.approx(0.0, abs=1e-6) and ref["within_11_25"] == 100.0
    assert std["mean"] == pytest.approx(expected, abs=1e-6) and 123.0 < expected < 123.2


def test_nyu_normals_any_255_channel_is_invalid_under_adapmtl() -> None:
    # Pixel 0: (255, 0, 0) — one channel at 255: standard keeps it (only (255,255,255) is invalid),
    # adapmtl drops it. Pixel 1: (0, 10, 0) with prediction along encoded y: adapmtl 0°.
    target = torch.tensor([[255, 0], [0, 10], [0, 0]], dtype=torch.uint8).reshape(1, 3, 1, 2)
    pred = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    ref = make_metric("nyuv2", "normal", protocol="adapmtl")
    ref.update(pred, target)
    std = make_metric("nyuv2", "normal")
    std.update(pred, target)
    assert ref.num_valid == 1 and std.num_valid == 2
    assert ref.compute()["mean"] == pytest.approx(0.0, abs=1e-6)


def test_angle_thresholds_strict_vs_inclusive() -> None:
    # Angles exactly on the thresholds: standard counts angle < X (none), adapmtl angle <= X (as numpy's
    # less_equal in the reference). within_11_25: 1 of 3 vs 0; within_22_5: 2 of 3 vs 1; within_30: 3 vs 2.
    angles = torch.tensor([11.25, 22.5, 30.0], dtype=torch.float64)
    std, ref = NormalMetric(), ReferenceNormalMetric(encoded=True)
    for metric in (std, ref):
        metric._to_state_device(angles)
        metric._add_angles(angles)
    s, r = std.compute(), ref.compute()
    assert (s["within_11_25"], s["within_22_5"], s["within_30"]) == pytest.approx((0.0, 100 / 3, 200 / 3))
    assert (r["within_11_25"], r["within_22_5"], r["within_30"]) == pytest.approx((100 / 3, 200 / 3, 100.0))


def test_taskonomy_normals_are_decoded_floats_with_cos_sim_first() -> None:
    # Two finite pixels: prediction equal to the target (cos 1) and orthogonal (cos 0); one NaN pixel.
    target = torch.tensor([[1.0, 0.0, math.nan], [0.0, 1.0, math.nan], [0.0, 0.0, math.nan]]).reshape(
        1, 3, 1, 3
    )
    pred = torch.tensor([[2.0, 1.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]).reshape(1, 3, 1, 3)
    ref = compute("taskonomy", "normal", pred, target, "adapmtl")
    assert next(iter(ref)) == "cos_sim" and ref["cos_sim"] == pytest.approx(0.5)
    assert ref["mean"] == pytest.approx(45.0) and ref["within_30"] == pytest.approx(50.0)


# ----------------------------------------------------------------------------------------------- depth

# Batch A (1 image): gt [1, 2], pred [1.5, 2] → abs 0.5/2 = 0.25, rel (0.5/1)/2 = 0.25.
# Batch B (1 image): gt [4], pred [2] (padded with an invalid gt 0) → abs 2, rel 0.5.
# adapmtl (per batch, weighted by batch size): abs (0.25 + 2)/2 = 1.125, rel (0.25 + 0.5)/2 = 0.375
# standard (pooled): abs (0.5 + 0 + 2)/3 = 5/6, rel (0.5 + 0 + 0.5)/3 = 1/3
# δ over the pooled ratios max(p/g, g/p) = [1.5, 1, 2]: ≤ 1.25 → 1/3; ≤ 1.5625 → 2/3; ≤ 1.953 → 2/3.
DEPTH_GT = [torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2), torch.tensor([4.0, 0.0]).reshape(1, 1, 1, 2)]
DEPTH_PRED = [torch.tensor([1.5, 2.0]).reshape(1, 1, 1, 2), torch.tensor([2.0, 9.0]).reshape(1, 1, 1, 2)]


def test_depth_batch_weighted_vs_pooled() -> None:
    ref = compute("nyuv2", "depth_zbuffer", DEPTH_PRED, DEPTH_GT, "adapmtl")
    std = compute("nyuv2", "depth_zbuffer", DEPTH_PRED, DEPTH_GT)
    assert ref["abs_err"] == pytest.approx(1.125) and ref["rel_err"] == pytest.approx(0.375)
    assert std["abs_err"] == pytest.approx(5 / 6) and std["rel_err"] == pytest.approx(1 / 3)
    for out in (ref, std):
        assert out["delta_1_25"] == pytest.approx(100 / 3)
        assert out["delta_1_25_2"] == pytest.approx(200 / 3)
        assert out["delta_1_25_3"] == pytest.approx(200 / 3)


def test_depth_negative_prediction_and_validity_threshold() -> None:
    # Pixel 0: gt 2, pred −2 → ratio max(−1, −1) = −1: a δ hit for the reference, a miss for standard.
    # Pixel 1: gt 2e-5 — valid for standard (> 0), invalid for the reference (needs > 3e-5); pred 2e-5.
    gt = torch.tensor([2.0, 2e-5]).reshape(1, 1, 1, 2)
    pred = torch.tensor([-2.0, 2e-5]).reshape(1, 1, 1, 2)
    ref = compute("nyuv2", "depth_zbuffer", pred, gt, "adapmtl")
    std = compute("nyuv2", "depth_zbuffer", pred, gt)
    assert ref["delta_1_25"] == 100.0 and ref["abs_err"] == pytest.approx(4.0)  # one valid pixel, |−2 − 2|
    assert std["delta_1_25"] == pytest.approx(50.0) and std["abs_err"] == pytest.approx(2.0)  # (4 + 0)/2


def test_empty_batch_gives_nan_like_the_reference() -> None:
    # A batch with no valid depth divides 0 by 0 in the reference: the average becomes NaN, not re-weighted.
    gts = [torch.tensor([1.0]).reshape(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]
    preds = [torch.tensor([1.0]).reshape(1, 1, 1, 1), torch.ones(1, 1, 1, 1)]
    assert math.isnan(compute("nyuv2", "depth_zbuffer", preds, gts, "adapmtl")["abs_err"])
    assert compute("nyuv2", "depth_zbuffer", preds, gts)["abs_err"] == 0.0


def test_taskonomy_l1_is_batch_weighted_under_adapmtl() -> None:
    # Batch A (2 images, 1 pixel each): errors 0 and 1 → batch mean 0.5, weight 2.
    # Batch B (1 image, 2 pixels + a NaN one): errors 0.2 and 0.4 → batch mean 0.3, weight 1.
    # adapmtl: (2·0.5 + 1·0.3)/3 = 1.3/3; standard pooled: (0 + 1 + 0.2 + 0.4)/4 = 0.4.
    gts = [
        torch.tensor([0.0, 0.0]).reshape(2, 1, 1, 1),
        torch.tensor([0.0, 0.0, math.nan]).reshape(1, 1, 1, 3),
    ]
    preds = [torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1), torch.tensor([0.2, 0.4, 9.0]).reshape(1, 1, 1, 3)]
    ref = compute("taskonomy", "keypoints2d", preds, gts, "adapmtl")
    std = compute("taskonomy", "keypoints2d", preds, gts)
    assert ref == {"err": pytest.approx(1.3 / 3)} and std == {"err": pytest.approx(0.4)}


# -------------------------------------------------------------------------------- resolution handling


def test_predictions_upsampled_nearest_vs_bilinear() -> None:
    # A 1×2 depth prediction [1, 3] against a 1×4 target [1, 1, 3, 3]:
    # nearest → [1, 1, 3, 3] (abs 0); bilinear (half-pixel) → [1, 1.5, 2.5, 3] (abs (0.5 + 0.5)/4 = 0.25).
    pred = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    gt = torch.tensor([1.0, 1.0, 3.0, 3.0]).reshape(1, 1, 1, 4)
    assert compute("nyuv2", "depth_zbuffer", pred, gt, "adapmtl")["abs_err"] == 0.0
    assert compute("nyuv2", "depth_zbuffer", pred, gt)["abs_err"] == pytest.approx(0.25)


def test_resize_batch_keeps_label_values_and_dtypes() -> None:
    seg = torch.tensor([[[0, 1, 2, 255]]])
    normal = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 1, 4)
    depth = torch.tensor([[[[0.5, math.nan, 2.0, 3.0]]]])
    batch = {
        "input": torch.rand(1, 3, 1, 4),
        "segment_semantic": seg,
        "normal": normal,
        "depth_zbuffer": depth,
    }
    out = resize_batch(batch, ("segment_semantic", "normal", "depth_zbuffer"), (3, 8))
    assert out["input"].shape == (1, 3, 3, 8)
    assert out["segment_semantic"].dtype == torch.int64 and out["normal"].dtype == torch.uint8
    # Nearest 4 → 8 columns repeats each column twice; every row is the same.
    assert out["segment_semantic"][0, 1].tolist() == [0, 0, 1, 1, 2, 2, 255, 255]
    assert out["normal"][0, 2, 0].tolist() == [8, 8, 9, 9, 10, 10, 11, 11]
    assert torch.isnan(out["depth_zbuffer"][0, 0, 2, 2:4]).all()


# ------------------------------------------------------------------------------------ training objective


def test_adapmtl_normal_loss_uses_the_raw_encoding() -> None:
    # Target (10, 0, 0) encoded; prediction (1, 0, 0): the reference loss is 1 − cos = 0 in encoded space,
    # the standard loss compares with the decoded (−0.9216, −1, −1): 1 − cos(123.08°) ≈ 1.5459.
    target = torch.tensor([10, 0, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
    pred = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    d = 10 / 127.5 - 1
    assert float(task_loss("nyuv2", "normal", pred, target, protocol="adapmtl")) == pytest.approx(
        0.0, abs=1e-6
    )
    expected = 1 - d / math.sqrt(d * d + 2)
    assert float(task_loss("nyuv2", "normal", pred, target)) == pytest.approx(expected, rel=1e-5)


def test_adapmtl_losses_run_at_head_resolution() -> None:
    # A 1×1 depth prediction 1 against the 2×2 target [[1, 9], [9, 9]]: the reference downsamples the target
    # (nearest → 1) and gets 0; standard upsamples the prediction and gets mean |1 − [1, 9, 9, 9]| = 6.
    pred = torch.ones(1, 1, 1, 1)
    target = torch.tensor([[1.0, 9.0], [9.0, 9.0]]).reshape(1, 1, 2, 2)
    assert float(task_loss("nyuv2", "depth_zbuffer", pred, target, protocol="adapmtl")) == 0.0
    assert float(task_loss("nyuv2", "depth_zbuffer", pred, target)) == pytest.approx(6.0)


@pytest.mark.parametrize("protocol", ["standard", "adapmtl"])
def test_masked_losses_scatter_their_gradient_without_index_put(protocol) -> None:
    # Depth prediction [1, 2, 4, 8] against target [2, 0, 0, 6] (0 = invalid): L1 over pixels 0 and 3 =
    # (|1 − 2| + |8 − 6|) / 2 = 1.5, gradient [−0.5, 0, 0, +0.5] (sign of pred − target over the count).
    pred = torch.tensor([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([2.0, 0.0, 0.0, 6.0]).reshape(1, 1, 2, 2)
    loss = task_loss("nyuv2", "depth_zbuffer", pred, target, protocol=protocol)
    loss.backward()
    assert float(loss) == 1.5
    assert pred.grad.flatten().tolist() == [-0.5, 0.0, 0.0, 0.5]
    # The mean reads the valid pixels through masked_select (backward: masked_scatter_), not through
    # boolean indexing, whose backward is an accumulating index_put_ (a slow sort-based kernel under CUDA's
    # deterministic mode): the same values and gradient bit for bit, checked here on a random batch.
    nodes, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node.name() not in nodes:
            nodes.add(node.name())
            stack += [n for n, _ in node.next_functions]
    assert "MaskedSelectBackward0" in nodes and "IndexBackward0" not in nodes
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 1, 17, 19, generator=gen, requires_grad=True)
    invalid = torch.rand(4, 1, 17, 19, generator=gen) < 0.3
    target = torch.rand(4, 1, 17, 19, generator=gen).masked_fill(invalid, 0)
    ours = task_loss("nyuv2", "depth_zbuffer", pred, target, protocol=protocol)
    (grad_ours,) = torch.autograd.grad(-ours, pred)
    valid = target > (0 if protocol == "standard" else 3e-5)
    indexed = (pred - target).abs()[valid].sum() / valid.sum()
    (grad_indexed,) = torch.autograd.grad(-indexed, pred)
    assert torch.equal(ours, indexed) and torch.equal(grad_ours, grad_indexed)
    assert torch.equal(grad_ours.signbit(), grad_indexed.signbit())


def test_flip_keeps_normal_x_under_adapmtl(synthetic_root) -> None:
    from mtlprune.datasets.nyuv2 import NYUv2

    kwargs = {"augment": True, "crop": (32, 40), "scale": (1.0, 1.0)}
    plain = NYUv2(synthetic_root, "train")
    std = NYUv2(synthetic_root, "train", **kwargs)
    ref = NYUv2(synthetic_root, "train", protocol="adapmtl", **kwargs)
    flipped = 0
    for i in range(len(plain)):
        raw, s, r = plain[i]["normal"], std[i]["normal"], ref[i]["normal"]
        if torch.equal(r, raw):
            assert torch.equal(s, raw)
            continue
        flipped += 1
        assert torch.equal(r, raw.flip(-1))  # mirrored, x untouched
        valid = ~(raw.flip(-1) == 255).all(dim=0)
        assert torch.equal(s[0][valid], 255 - raw.flip(-1)[0][valid])  # standard negates x
    assert flipped > 0
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        NYUv2(synthetic_root, "train", protocol="paper")


# ------------------------------------------------------------------------------ input side (cv2.resize)
# The `adapmtl` loaders resize as the reference's cv2.resize (OpenCV 4.5.1) does: mtlprune.datasets.cvresize.
# Horizontal taps of 2 → 5 columns (scale 0.4): f = (d + ½)·0.4 − ½ as float32 = −0.3, 0.1, 0.5, 0.9, 1.3;
# f < 0 and f ≥ 1 clamp to a border pixel. Fixed-point weights round(w·2048): f = 0.1 → (1843, 205),
# 0.5 → (1024, 1024), 0.9 → (205, 1843). One row → one row: vertical weights (2048, 0).


def test_cv_linear_uint8_truncates_as_opencv() -> None:
    from mtlprune.datasets.cvresize import resize_linear

    row = torch.tensor([[184, 219]], dtype=torch.uint8)
    # d = 3: R = 184·205 + 219·1843 = 441337; R >> 4 = 27583; 27583·2048 >> 16 = 861; (861 + 2) >> 2 = 215,
    # where round(bilinear) gives round(184·0.1 + 219·0.9 = 215.5) = 216.
    # d = 1: R = 184·1843 + 219·205 = 384007 → 24000 → 750 → 188 (187.5 rounded up: the two agree).
    # d = 2: R = 403·1024 = 412672 → 25792 → 806 → 202 (201.5 → 202).
    assert resize_linear(row, (1, 5)).tolist() == [[184, 188, 202, 215, 219]]
    bilinear = F.interpolate(row[None, None].float(), size=(1, 5), mode="bilinear", align_corners=False)
    assert bilinear.round().flatten().tolist() == [184, 188, 202, 216, 219]  # what the torch path rounds to


def test_cv_linear_keeps_unclamped_vertical_weights() -> None:
    from mtlprune.datasets.cvresize import resize_linear

    # 2 → 5 rows: output row 0 samples f = −0.3 → row −1 with weight 0.3 and row 0 with 0.7; OpenCV clips
    # both rows to row 0 but keeps the weights (614, 1434) instead of clamping them to (2048, 0).
    # Column 1 of row 0: R = 171·1843 + 206·205 = 357383; R >> 4 = 22336;
    # (22336·614 >> 16) + (22336·1434 >> 16) = 209 + 488 = 697; (697 + 2) >> 2 = 174.
    # Clamped weights would give (22336·2048 >> 16 + 2) >> 2 = (698 + 2) >> 2 = 175.
    image = torch.tensor([[171, 206], [5, 206]], dtype=torch.uint8)
    out = resize_linear(image, (5, 5))
    assert out[0, :2].tolist() == [171, 174]
    assert out.dtype == torch.uint8 and out.shape == (5, 5)
    # Three channels are resized independently, exactly as one.
    rgb = torch.stack([image, 255 - image, image // 2])
    out3 = resize_linear(rgb, (5, 5))
    for c in range(3):
        assert torch.equal(out3[c], resize_linear(rgb[c], (5, 5)))


def test_cv_linear_float_is_not_rounded_and_nearest_is_floor() -> None:
    from mtlprune.datasets.cvresize import resize_linear, resize_nearest

    # 2 → 3 columns: f = −1/6 (clamped: 0), ½ (halfway), 7/6 (clamped: the last pixel).
    out = resize_linear(torch.tensor([[0.0, 255.0]]), (1, 3))
    assert out.dtype == torch.float32 and out.tolist() == [[0.0, 127.5, 255.0]]
    # INTER_NEAREST 5 → 3: source ⌊d·5/3⌋ = 0, 1, 3 (no half-pixel shift); NaN and 255 copied as they are.
    labels = torch.tensor([[0.0, math.nan, 2.0, 255.0, 4.0]])
    assert resize_nearest(labels, (1, 3))[0, [0, 2]].tolist() == [0.0, 255.0]
    assert math.isnan(resize_nearest(labels, (1, 3))[0, 1])


def test_scaled_size_truncates_under_adapmtl_only(synthetic_root) -> None:
    from mtlprune.datasets.nyuv2 import NYUv2

    # 480·0.5011 = 240.528 and 640·0.5011 = 320.704: round → (241, 321), the reference's int → (240, 320).
    assert NYUv2(synthetic_root, "train").scaled_size(480, 640, 0.5011) == (241, 321)
    assert NYUv2(synthetic_root, "train", protocol="adapmtl").scaled_size(480, 640, 0.5011) == (240, 320)


def _normalised(image: torch.Tensor) -> torch.Tensor:
    from mtlprune.datasets.base import IMAGENET_MEAN, IMAGENET_STD

    return (image.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def test_nyuv2_adapmtl_test_split_is_resized_by_opencv_rules(synthetic_root) -> None:
    from mtlprune.datasets.cvresize import resize_linear, resize_nearest
    from mtlprune.datasets.nyuv2 import NYUv2

    std = NYUv2(synthetic_root, "test")
    ref = NYUv2(synthetic_root, "test", protocol="adapmtl")
    raw = std.load_raw(0)
    assert std[0]["input"].shape[-2:] == raw["image"].shape[-2:]  # standard: native, untouched
    assert torch.equal(std[0]["input"], _normalised(raw["image"]))
    sample = ref[0]
    # The uint8 image resized (and rounded) by OpenCV's rules, then scaled and normalised as always.
    assert torch.equal(sample["input"], _normalised(resize_linear(raw["image"], (321, 321))))
    for task in ("segment_semantic", "normal", "depth_zbuffer"):
        assert torch.equal(sample[task], resize_nearest(raw[task], (321, 321)))
    # evaluate()'s own resize (for a test set built under another protocol) leaves it as it is.
    batch = {"input": sample["input"][None], **{t: sample[t][None] for t in ref.tasks_used}}
    assert resize_batch(batch, ref.tasks_used, (321, 321))["input"] is batch["input"]


def test_nyuv2_adapmtl_training_scale_uses_int_and_opencv(synthetic_root) -> None:
    from mtlprune.datasets.cvresize import resize_linear, resize_nearest
    from mtlprune.datasets.nyuv2 import NYUv2

    # A 32×40 frame scaled by 1.3: int → 41×52 (round would give 42×52); a 41×52 crop then takes it all.
    kwargs = {"augment": True, "crop": (41, 52), "scale": (1.3, 1.3), "flip": False}
    ref = NYUv2(synthetic_root, "train", protocol="adapmtl", **kwargs)
    raw = ref.load_raw(1)
    assert tuple(raw["image"].shape[-2:]) == (32, 40)
    sample = ref[1]
    assert torch.equal(sample["input"], _normalised(resize_linear(raw["image"], (41, 52))))
    assert torch.equal(sample["depth_zbuffer"], resize_nearest(raw["depth_zbuffer"], (41, 52)))
    # Standard scales to 42×52 and crops 41 of its 42 rows: not the same pixels.
    std = NYUv2(synthetic_root, "train", **kwargs)
    assert std[1]["input"].shape == sample["input"].shape
    assert not torch.equal(std[1]["input"], sample["input"])


def test_taskonomy_adapmtl_reads_at_256_and_tests_at_224(tmp_path) -> None:
    from mtlprune.datasets.cvresize import resize_linear, resize_nearest
    from mtlprune.datasets.synthetic import write_taskonomy
    from mtlprune.datasets.taskonomy import Taskonomy

    root = write_taskonomy(tmp_path / "tk", n_train=2, n_test=1, height=32, width=40, seed=0)
    std, ref = Taskonomy(root, "test"), Taskonomy(root, "test", protocol="adapmtl")
    raw = std.load_raw(0)
    assert std[0]["input"].shape[-2:] == (32, 40)
    sample = ref[0]
    # RGB → float32 → nearest 256×256 → bilinear 224×224 in float: never rounded back to integers.
    at_256 = resize_nearest(raw["image"].float(), (256, 256))
    image = resize_linear(at_256, (224, 224))
    assert not torch.equal(image, image.round())
    assert torch.equal(sample["input"], _normalised(image))
    for task in ref.tasks_used:
        expected = resize_nearest(resize_nearest(raw[task], (256, 256)), (224, 224))
        assert torch.equal(sample[task].nan_to_num(-7.0), expected.nan_to_num(-7.0)), task
    # Training reads every frame at 256×256 before the random scale.
    train = Taskonomy(root, "train", protocol="adapmtl", augment=True, crop=(64, 64), scale=(0.25, 0.25))
    assert train[0]["input"].shape[-2:] == (64, 64)  # 256·0.25 = 64: the crop takes the whole scaled frame


# ------------------------------------------------------------------------------------------------ spec


def test_eval_spec_protocol_and_batch_size() -> None:
    assert EvalSpec().effective_batch_size == 8
    ref = EvalSpec(protocol="adapmtl")
    assert ref.effective_batch_size == 16
    with pytest.raises(ValidationError, match="always evaluates with batches of 16"):
        EvalSpec(protocol="adapmtl", batch_size=4)
    with pytest.raises(ValidationError, match="protocol"):
        EvalSpec(protocol="paper")


def test_compute_rejects_bad_calls() -> None:
    gt = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        compute("nyuv2", "depth_zbuffer", gt, gt, "paper")
    with pytest.raises(ValueError, match="2 prediction batches but 1 target batches"):
        compute("nyuv2", "depth_zbuffer", [gt, gt], [gt], "adapmtl")
    with pytest.raises(KeyError, match="keypoints2d"):
        compute("nyuv2", "keypoints2d", gt, gt, "adapmtl")


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_adapmtl_run_end_to_end_matches_compute_on_resized_batches(tmp_path) -> None:
    """An `adapmtl` run is its own stage; stored dense metrics = compute() on 321×321 batches of 16."""
    from mtlprune.analysis import load_results
    from mtlprune.engine.build import build_model
    from mtlprune.engine.data import build_dataset, eval_batches
    from mtlprune.execution.matrix import run_matrix
    from mtlprune.store import Store
    from tests.helpers import tiny_matrix

    matrix = tiny_matrix(eval={"protocol": "adapmtl"}, methods=[{"name": "magnitude"}], sparsities=[0.9])
    standard = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.9])
    cell, standard_cell = matrix.expand()[0], standard.expand()[0]
    assert cell.dense().run_id != standard_cell.dense().run_id and cell.run_id != standard_cell.run_id
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    row = load_results(store.root).iloc[0]
    assert row["protocol"] == "adapmtl" and row["status"] == "done"

    dense_id = cell.dense().run_id  # the dense stage keeps its final weights; cells keep masks only
    model = build_model(cell)
    model.load_state_dict(torch.load(store.run_dir(dense_id) / "model.pt", weights_only=True))
    model.eval()
    test_set = build_dataset(cell.data, store.root, "test", protocol="adapmtl")
    preds: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    targets: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    with torch.no_grad():
        for batch in eval_batches(test_set, 16):
            batch = resize_batch(batch, model.tasks, (321, 321))
            outputs = model(batch["input"])
            for task in model.tasks:
                preds[task].append(outputs[task])
                targets[task].append(batch[task])
    stored = store.result(dense_id).metrics
    for task in model.tasks:
        expected = compute("nyuv2", task, preds[task], targets[task], "adapmtl")
        for name, value in expected.items():
            assert stored[f"{task}.{name}"] == pytest.approx(value, rel=1e-6, nan_ok=True), (task, name)
