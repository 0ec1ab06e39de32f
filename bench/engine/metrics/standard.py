"""Dense-prediction metric accumulators for NYU-v2 and Tiny-Taskonomy under the ``standard`` protocol.

Why accumulators: every statistic is **pooled over all valid pixels of the whole test set**. An accumulator
keeps sufficient statistics (a confusion matrix, sums, counts, a histogram of angles) and ``compute()``
turns them into metrics once at the end. The result is therefore independent of how the test set is
batched, of the order of batches and of a smaller last batch. The AdapMTL reference code instead averages
per-batch pixel accuracy, abs_err and rel_err weighted by batch *size* (not by valid-pixel count), so its
numbers move with the loader's batch size and shuffling; ``standard`` avoids that.

Everything runs with torch ops on the device of the tensors passed to the first ``update`` (no per-pixel
Python loops); counters are int64 and sums float64 so a 654×480×640 test set loses no precision. The keys
of ``compute()`` are the metric names of ``mtlprune.vocabulary.METRICS[dataset]`` (tests pin that).

Choices of the ``standard`` protocol (docs/protocols.md lists them beside the ``adapmtl`` ones):

* segmentation: valid pixels are ``target != ignore_index``; any other target label outside
  ``[0, num_classes)`` is an error, as is a predicted label outside that range on a valid pixel.
  ``miou`` averages IoU over the classes present in the ground truth **or** the prediction (union > 0);
  ``pixel_acc`` is Σ TP / #valid. Both are fractions in [0, 1].
* normals: targets are decoded from the uint8 NYU encoding ``v = (n + 1) · 127.5``; a pixel is invalid
  when all three channels are 255. Target and prediction are normalised with an eps guard, so a zero
  prediction stays in with cos = 0 (90°). ``within_X`` counts angles strictly below X degrees.
  The median comes from a histogram (see :class:`NormalMetric`) and is within 0.0005° of the exact median.
* depth: valid pixels are ``target > 0`` and finite. δ_k counts ``max(p/g, g/p) < 1.25**k`` (strict) and
  counts predictions ``p <= 0`` as failures; abs_err and rel_err include those pixels. Non-finite
  predictions are not filtered: a diverged model reports NaN/inf errors rather than a flattering subset.

Tiny-Taskonomy (targets as decoded by its loader: labels 0..16 with 255 = ignore, float targets NaN on
invalid pixels; see ``mtlprune.engine.tasks``):

* segmentation: ``err`` is the class-weighted cross-entropy Σ_i w_{y_i}·CE_i / Σ_i w_{y_i} over all valid
  pixels of the test set, i.e. PyTorch's ``weight=`` mean reduction pooled over the whole split (the
  reference instead averages per-batch values weighted by batch size). ``miou`` and ``pixel_acc`` as for
  NYU, 17 classes.
* normals: valid pixels have a finite target in all three channels; ``cos_sim`` is the mean cosine between
  the eps-normalised prediction and target, and the NYU angle metrics are computed from the same cosines.
* depth: ``abs_err`` = mean |p − g| over finite targets, in the loader's log-normalised units
  log(1+d)/log(2^16); ``rel_err`` = mean |p − g| / g over finite targets with g > 0 (g = 0 only at d = 0).
  keypoints2d / edge_texture: ``err`` = mean |p − g| over finite targets ([−1, 1]).

The ``adapmtl`` protocol (:mod:`mtlprune.engine.metrics.adapmtl`) reproduces the reference evaluation
instead: mIoU over classes with TP > 0, normals compared in the raw uint8 encoding with any channel = 255
invalid, ``≤`` thresholds, δ counting negative predictions as hits, per-batch averages weighted by batch
size. Its numbers are not comparable with these.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "CosineNormalMetric",
    "DepthMetric",
    "L1Metric",
    "LogDepthMetric",
    "NormalMetric",
    "SegmentationMetric",
    "WeightedSegmentationMetric",
]


def _check_same_shape(what: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
        )


def _no_valid_pixels(task: str) -> ValueError:
    return ValueError(f"{task}: no valid pixels were seen; call update() with at least one valid pixel")


class _Accumulator:
    """Shared plumbing: state lives on the device of the first update and moves nowhere after that."""

    task: str = ""

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (state is re-created on the next update's device)."""
        self._device = None
        self._reset_state()

    def _reset_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_state(self, device: torch.device) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _to_state_device(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Detach inputs and bring them to the accumulator's device, creating the state on first use."""
        if self._device is None:
            self._device = tensors[0].device
            self._init_state(self._device)
        return tuple(t.detach().to(self._device) for t in tensors)

    @property
    def num_valid(self) -> int:
        """Number of valid pixels accumulated so far."""
        raise NotImplementedError  # pragma: no cover - abstract


class SegmentationMetric(_Accumulator):
    """Confusion-matrix mIoU and pixel accuracy pooled over all valid pixels of the test set."""

    task = "segment_semantic"

    def __init__(self, num_classes: int = 40, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _reset_state(self) -> None:
        self.confusion: Tensor | None = None  # (num_classes, num_classes), rows = ground truth

    def _init_state(self, device: torch.device) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, logits_or_labels: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,C,H,W)`` logits or ``(B,H,W)`` integer labels against ``(B,H,W)`` targets."""
        pred = logits_or_labels
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise ValueError(f"{self.task}: target must be an integer label tensor, got {target.dtype}")
        if target.dim() != 3:
            raise ValueError(f"{self.task}: target must be (B,H,W), got shape {tuple(target.shape)}")
        if pred.dim() == 4:
            if pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"{self.task}: logits have {pred.shape[1]} channels but num_classes is "
                    f"{self.num_classes} (shape {tuple(pred.shape)})"
                )
            if pred.shape[:1] + pred.shape[2:] != target.shape:
                raise ValueError(
                    f"{self.task}: logits shape {tuple(pred.shape)} does not match target shape "
                    f"{tuple(target.shape)} (expected (B,C,H,W) against (B,H,W))"
                )
            pred, target = self._to_state_device(pred, target)
            labels = pred.argmax(dim=1)
        elif pred.dim() == 3:
            if pred.dtype.is_floating_point or pred.dtype.is_complex or pred.dtype == torch.bool:
                raise ValueError(
                    f"{self.task}: a (B,H,W) prediction must hold integer labels, got {pred.dtype}; "
                    "pass (B,C,H,W) logits otherwise"
                )
            _check_same_shape(self.task, pred, target)
            labels, target = self._to_state_device(pred, target)
        else:
            raise ValueError(
                f"{self.task}: prediction must be (B,C,H,W) logits or (B,H,W) labels, got shape "
                f"{tuple(pred.shape)} against target shape {tuple(target.shape)}"
            )

        target = target.long().reshape(-1)
        labels = labels.long().reshape(-1)
        valid = target != self.ignore_index
        target = target[valid]
        labels = labels[valid]
        n = self.num_classes
        bad_t = (target < 0) | (target >= n)
        if bool(bad_t.any()):
            value = int(target[bad_t][0])
            raise ValueError(
                f"{self.task}: target label {value} is outside [0, {n}) and is not ignore_index "
                f"{self.ignore_index}"
            )
        bad_p = (labels < 0) | (labels >= n)
        if bool(bad_p.any()):
            value = int(labels[bad_p][0])
            raise ValueError(f"{self.task}: predicted label {value} is outside [0, {n})")
        assert self.confusion is not None
        self.confusion += torch.bincount(target * n + labels, minlength=n * n).reshape(n, n)

    @property
    def num_valid(self) -> int:
        return 0 if self.confusion is None else int(self.confusion.sum())

    def compute(self) -> dict[str, float]:
        """``miou`` over classes with union > 0 and pooled ``pixel_acc``, both fractions in [0, 1]."""
        if self.confusion is None or int(self.confusion.sum()) == 0:
            raise _no_valid_pixels(self.task)
        cm = self.confusion.to(torch.float64)
        tp = cm.diagonal()
        union = cm.sum(dim=1) + cm.sum(dim=0) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean()
        pixel_acc = tp.sum() / cm.sum()
        return {"miou": float(miou), "pixel_acc": float(pixel_acc)}


class NormalMetric(_Accumulator):
    """Angular error of surface normals pooled over all valid pixels.

    The median needs every angle, which does not fit in memory for a full test set, so angles are binned
    into a fixed histogram of ``BIN_WIDTH`` = 0.001° over [0°, 180°] (bin b covers [b·w, (b+1)·w); 180°
    itself falls in the last bin). Rule, matching ``numpy.median``: with N angles sorted, take rank
    k = (N+1)/2 for odd N, or ranks N/2 and N/2+1 for even N (1-based); each rank's value is reported as
    the centre of the bin holding it, clipped to the [min, max] of all angles seen, and the two are averaged
    for even N. The result is within w/2 = 0.0005° of the exact median (and exact when all angles are
    equal). Mean and the ``within_X`` fractions are computed from exact sums and counts, not the histogram.
    """

    task = "normal"
    BINS_PER_DEGREE = 1000
    BIN_WIDTH = 1.0 / BINS_PER_DEGREE
    NUM_BINS = 180 * BINS_PER_DEGREE
    THRESHOLDS: ClassVar[dict[str, float]] = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}
    EPS = 1e-12
    INCLUSIVE = False  # `within_X` counts angle < X (standard); the adapmtl protocol counts angle <= X

    def _reset_state(self) -> None:
        self.count = 0
        self.angle_sum: Tensor | None = None
        self.within: Tensor | None = None  # counts of angles < each threshold, in THRESHOLDS order
        self.hist: Tensor | None = None
        self.angle_min: Tensor | None = None
        self.angle_max: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        self.angle_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.within = torch.zeros(len(self.THRESHOLDS), dtype=torch.int64, device=device)
        self.hist = torch.zeros(self.NUM_BINS, dtype=torch.int64, device=device)
        self.angle_min = torch.full((), math.inf, dtype=torch.float64, device=device)
        self.angle_max = torch.full((), -math.inf, dtype=torch.float64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,3,H,W)`` predictions (any scale) against uint8-encoded ``(B,3,H,W)`` targets."""
        _check_same_shape(self.task, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"{self.task}: expected (B,3,H,W) tensors, got shape {tuple(pred.shape)}")
        pred, target = self._to_state_device(pred, target)
        valid = ~(target == 255).all(dim=1)  # (B,H,W)
        # (N,3) rows of valid pixels; float64 keeps arccos accurate near 0° (float32 is off by ~0.02°).
        g = target.permute(0, 2, 3, 1)[valid].to(torch.float64) / 127.5 - 1.0
        p = pred.permute(0, 2, 3, 1)[valid].to(torch.float64)
        if g.shape[0] == 0:
            return
        g = g / g.norm(dim=1, keepdim=True).clamp_min(self.EPS)
        p = p / p.norm(dim=1, keepdim=True).clamp_min(self.EPS)
        angle = torch.rad2deg(torch.arccos((g * p).sum(dim=1).clamp(-1.0, 1.0)))
        self._add_angles(angle)

    def _add_angles(self, angle: Tensor) -> None:
        assert self.hist is not None and self.within is not None and self.angle_sum is not None
        assert self.angle_min is not None and self.angle_max is not None
        self.count += int(angle.numel())
        self.angle_sum += angle.sum()
        thresholds = torch.tensor(list(self.THRESHOLDS.values()), dtype=torch.float64, device=angle.device)
        hits = (
            angle[:, None] <= thresholds[None, :] if self.INCLUSIVE else angle[:, None] < thresholds[None, :]
        )
        self.within += hits.sum(dim=0)
        idx = torch.floor(angle * self.BINS_PER_DEGREE).long().clamp_(0, self.NUM_BINS - 1)
        self.hist += torch.bincount(idx, minlength=self.NUM_BINS)
        self.angle_min = torch.minimum(self.angle_min, angle.min())
        self.angle_max = torch.maximum(self.angle_max, angle.max())

    @property
    def num_valid(self) -> int:
        return self.count

    def _median(self) -> float:
        assert self.hist is not None and self.angle_min is not None and self.angle_max is not None
        cum = self.hist.cpu().cumsum(0)
        n = self.count
        ranks = [(n + 1) // 2] if n % 2 else [n // 2, n // 2 + 1]
        lo, hi = float(self.angle_min), float(self.angle_max)
        values = []
        for k in ranks:
            b = int(torch.searchsorted(cum, torch.tensor([k], dtype=cum.dtype))[0])
            values.append(min(max((b + 0.5) * self.BIN_WIDTH, lo), hi))
        return sum(values) / len(values)

    def compute(self) -> dict[str, float]:
        """Mean/median angle in degrees and the percentage of angles strictly below 11.25°, 22.5°, 30°."""
        if self.count == 0:
            raise _no_valid_pixels(self.task)
        assert self.angle_sum is not None and self.within is not None
        out = {"mean": float(self.angle_sum) / self.count, "median": self._median()}
        within = self.within.cpu().tolist()
        for name, c in zip(self.THRESHOLDS, within, strict=True):
            out[name] = 100.0 * c / self.count
        return out


class DepthMetric(_Accumulator):
    """Absolute/relative depth error and δ accuracies pooled over all valid pixels."""

    task = "depth_zbuffer"
    THRESHOLDS: ClassVar[dict[str, float]] = {
        "delta_1_25": 1.25,
        "delta_1_25_2": 1.25**2,
        "delta_1_25_3": 1.25**3,
    }

    def _reset_state(self) -> None:
        self.count = 0
        self.abs_sum: Tensor | None = None
        self.rel_sum: Tensor | None = None
        self.within: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.rel_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.within = torch.zeros(len(self.THRESHOLDS), dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,1,H,W)`` predicted metres against ``(B,1,H,W)`` metres (valid: > 0, finite)."""
        _check_same_shape(self.task, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"{self.task}: expected (B,1,H,W) tensors, got shape {tuple(pred.shape)}")
        pred, target = self._to_state_device(pred, target)
        valid = torch.isfinite(target) & (target > 0)
        g = target[valid].to(torch.float64)
        p = pred[valid].to(torch.float64)
        if g.numel() == 0:
            return
        assert self.abs_sum is not None and self.rel_sum is not None and self.within is not None
        err = (p - g).abs()
        self.count += int(g.numel())
        self.abs_sum += err.sum()
        self.rel_sum += (err / g).sum()
        positive = p > 0
        # p <= 0 would give a negative (or inf) ratio that passes `< thr`; such pixels are failures.
        ratio = torch.where(positive, torch.maximum(p / g, g / p), torch.full_like(p, math.inf))
        thresholds = torch.tensor(list(self.THRESHOLDS.values()), dtype=torch.float64, device=p.device)
        self.within += (ratio[:, None] < thresholds[None, :]).sum(dim=0)

    @property
    def num_valid(self) -> int:
        return self.count

    def compute(self) -> dict[str, float]:
        """Pooled abs_err (m), rel_err (fraction) and δ accuracies (%)."""
        if self.count == 0:
            raise _no_valid_pixels(self.task)
        assert self.abs_sum is not None and self.rel_sum is not None and self.within is not None
        out = {"abs_err": float(self.abs_sum) / self.count, "rel_err": float(self.rel_sum) / self.count}
        for name, c in zip(self.THRESHOLDS, self.within.cpu().tolist(), strict=True):
            out[name] = 100.0 * c / self.count
        return out


# ------------------------------------------------------------------------------------------ Tiny-Taskonomy


def _finite_rows(what: str, pred: Tensor, target: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """(N, C) float64 rows of prediction and target at pixels whose target is finite in every channel."""
    _check_same_shape(what, pred, target)
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise ValueError(f"{what}: expected (B,{channels},H,W) tensors, got shape {tuple(pred.shape)}")
    if not target.dtype.is_floating_point:
        raise ValueError(
            f"{what}: target must be a float tensor with NaN on invalid pixels, got {target.dtype}"
        )
    valid = torch.isfinite(target).all(dim=1)  # (B,H,W)
    g = target.permute(0, 2, 3, 1)[valid].to(torch.float64)
    p = pred.permute(0, 2, 3, 1)[valid].to(torch.float64)
    return p, g


class WeightedSegmentationMetric(SegmentationMetric):
    """Taskonomy segmentation: pooled class-weighted cross-entropy ``err`` plus confusion-matrix ``miou``.

    ``err`` needs the logits, so ``update`` takes ``(B,C,H,W)`` logits only. It keeps Σ w_y·CE and Σ w_y
    in float64, so the value is PyTorch's weighted-mean cross-entropy over every valid pixel of the split.
    """

    def __init__(self, class_weights: Tensor, ignore_index: int = 255) -> None:
        weights = torch.as_tensor(class_weights).detach().to(torch.float64).reshape(-1)
        if weights.numel() < 1 or not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise ValueError(
                f"{self.task}: class_weights must be positive and finite, got {weights.tolist()}"
            )
        self.class_weights = weights.cpu()
        super().__init__(num_classes=weights.numel(), ignore_index=ignore_index)

    def _reset_state(self) -> None:
        super()._reset_state()
        self.weighted_ce: Tensor | None = None
        self.weight_sum: Tensor | None = None
        self._weights: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        super()._init_state(device)
        self.weighted_ce = torch.zeros((), dtype=torch.float64, device=device)
        self.weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._weights = self.class_weights.to(device)

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch of ``(B,C,H,W)`` logits against ``(B,H,W)`` labels (255 = ignore)."""
        if logits.dim() != 4 or not logits.dtype.is_floating_point:
            raise ValueError(
                f"{self.task}: the weighted cross-entropy needs (B,C,H,W) float logits, got "
                f"{logits.dtype} of shape {tuple(logits.shape)}"
            )
        super().update(logits, target)  # validates shapes and labels, fills the confusion matrix
        logits, target = self._to_state_device(logits, target)
        valid = target != self.ignore_index
        y = target[valid].long()
        if y.numel() == 0:
            return
        log_p = logits.permute(0, 2, 3, 1)[valid].to(torch.float64).log_softmax(dim=1)
        ce = -log_p.gather(1, y[:, None])[:, 0]
        assert self._weights is not None and self.weighted_ce is not None and self.weight_sum is not None
        w = self._weights[y]
        self.weighted_ce += (w * ce).sum()
        self.weight_sum += w.sum()

    def compute(self) -> dict[str, float]:
        """Pooled weighted cross-entropy ``err`` (nats), ``miou`` and ``pixel_acc`` (fractions)."""
        pooled = super().compute()  # raises when nothing valid was seen
        assert self.weighted_ce is not None and self.weight_sum is not None
        return {"err": float(self.weighted_ce / self.weight_sum), **pooled}


class CosineNormalMetric(NormalMetric):
    """Taskonomy normals: mean cosine similarity plus NYU's angle metrics from the same cosines."""

    def _reset_state(self) -> None:
        super()._reset_state()
        self.cos_sum: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        super()._init_state(device)
        self.cos_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,3,H,W)`` predictions (any scale) against float targets, NaN = invalid."""
        pred, target = self._to_state_device(pred, target)
        p, g = _finite_rows(self.task, pred, target, 3)
        if g.shape[0] == 0:
            return
        g = g / g.norm(dim=1, keepdim=True).clamp_min(self.EPS)
        p = p / p.norm(dim=1, keepdim=True).clamp_min(self.EPS)
        cos = (g * p).sum(dim=1).clamp(-1.0, 1.0)
        assert self.cos_sum is not None
        self.cos_sum += cos.sum()
        self._add_angles(torch.rad2deg(torch.arccos(cos)))

    def compute(self) -> dict[str, float]:
        """``cos_sim`` then mean/median angle (degrees) and the within-X percentages."""
        angles = super().compute()  # raises when nothing valid was seen
        assert self.cos_sum is not None
        return {"cos_sim": float(self.cos_sum) / self.count, **angles}


class L1Metric(_Accumulator):
    """Mean absolute error over finite-target pixels of a one-channel map, reported under ``name``."""

    def __init__(self, task: str, name: str) -> None:
        self.task, self.name = task, name
        super().__init__()

    def _reset_state(self) -> None:
        self.count = 0
        self.abs_sum: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,1,H,W)`` predictions against float targets, NaN = invalid."""
        pred, target = self._to_state_device(pred, target)
        p, g = _finite_rows(self.task, pred, target, 1)
        if g.numel() == 0:
            return
        assert self.abs_sum is not None
        self.count += int(g.numel())
        self.abs_sum += (p - g).abs().sum()

    @property
    def num_valid(self) -> int:
        return self.count

    def compute(self) -> dict[str, float]:
        """``{name: pooled mean |p − g|}`` in the target's units."""
        if self.count == 0:
            raise _no_valid_pixels(self.task)
        assert self.abs_sum is not None
        return {self.name: float(self.abs_sum) / self.count}


class LogDepthMetric(L1Metric):
    """Taskonomy depth: pooled ``abs_err`` over finite targets and ``rel_err`` over those with g > 0."""

    def __init__(self) -> None:
        super().__init__("depth_zbuffer", "abs_err")

    def _reset_state(self) -> None:
        super()._reset_state()
        self.rel_count = 0
        self.rel_sum: Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        super()._init_state(device)
        self.rel_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,1,H,W)`` predictions against log-normalised targets, NaN = invalid."""
        super().update(pred, target)
        pred, target = self._to_state_device(pred, target)
        p, g = _finite_rows(self.task, pred, target, 1)
        positive = g > 0
        assert self.rel_sum is not None
        self.rel_count += int(positive.sum())
        self.rel_sum += ((p - g).abs()[positive] / g[positive]).sum()

    def compute(self) -> dict[str, float]:
        """``abs_err`` then ``rel_err`` (NaN when no valid target was positive)."""
        out = super().compute()
        assert self.rel_sum is not None
        out["rel_err"] = float(self.rel_sum) / self.rel_count if self.rel_count else math.nan
        return out


Metric = SegmentationMetric | NormalMetric | DepthMetric | L1Metric
