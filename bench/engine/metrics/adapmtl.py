"""Metric accumulators of the ``adapmtl`` protocol: the AdapMTL reference evaluation, quirks included.

They reproduce ``data/pixel2pixel_metrics.py`` of the AdapMTL code (NYU and Taskonomy classes) so that our
numbers sit on the same scale as its published tables. Every quirk is deliberate here and listed in
docs/protocols.md beside the ``standard`` choice:

* segmentation: valid pixels are ``target < num_classes``; the confusion matrix is pooled, but **mIoU
  averages only the classes with at least one true positive** (classes never predicted correctly are
  dropped, which inflates mIoU). ``pixel_acc`` and Taskonomy's ``err`` (class-weighted cross-entropy) are
  **per-batch means averaged over batches weighted by batch size**, so they depend on how the test set is
  batched (the reference evaluates NYU-v2 with batches of 16).
* normals: valid pixels have **no** channel equal to 255 (a valid normal with a +1 component is dropped
  too). On NYU-v2 the target stays in its **raw uint8 encoding** (n+1)·127.5 and is L2-normalised as is,
  so angles are measured between encoded vectors; the model is trained against the same encoding (see
  ``mtlprune.engine.tasks``). On Taskonomy the decoded [−1, 1] target is used, valid where finite. Angles are
  pooled over the split; ``within_X`` counts angle **≤** X. The median comes from the same 0.001° histogram
  as the standard metric (within 0.0005° of ``numpy.median``; the tables print two decimals).
* depth: NYU-v2 valid pixels are ``target > 3e-5``; Taskonomy valid pixels are finite. ``abs_err`` and
  ``rel_err`` are per-batch Σ|p − g| / #valid (and Σ|p − g|/g / #valid), averaged over batches by batch
  size; δ_k = % of pooled valid pixels with max(p/g, g/p) **≤** 1.25^k, where a **negative prediction gives
  a negative ratio and counts as a hit** (p = 0 gives +inf and counts as a miss).
* keypoints2d / edge_texture: per-batch mean |p − g| over valid pixels, averaged by batch size.
* a batch without a single valid pixel contributes NaN to the per-batch averages (0/0), as in the
  reference; the result is then NaN rather than a silently re-weighted number.

Predictions are compared at the label resolution after **nearest** upsampling
(``mtlprune.engine.metrics.resize``);
the 321×321 (NYU-v2) / 224×224 (Taskonomy) resizing of the test inputs and labels happens before that, in
``mtlprune.engine.evaluate``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlprune.engine.metrics.standard import NormalMetric, _Accumulator, _check_same_shape, _no_valid_pixels

__all__ = [
    "NYU_DEPTH_MIN",
    "ReferenceDepthMetric",
    "ReferenceL1Metric",
    "ReferenceNormalMetric",
    "ReferenceSegmentationMetric",
]

NYU_DEPTH_MIN = 3e-5  # the reference's NYU-v2 depth validity threshold (gt > 3e-5)
ENCODED_INVALID = 255


class _BatchWeighted:
    """A per-batch statistic averaged over batches with batch-size weights (the reference's aggregation)."""

    def __init__(self) -> None:
        self.weighted_sum = 0.0
        self.total = 0

    def add(self, value: float, batch_size: int) -> None:
        self.weighted_sum += value * batch_size
        self.total += batch_size

    def mean(self) -> float:
        return self.weighted_sum / self.total if self.total else math.nan


def _batch_mean(values: Tensor) -> float:
    """Mean of a batch's valid values; 0/0 = NaN for an empty batch, as the reference computes it."""
    return float(values.sum()) / values.numel() if values.numel() else math.nan


class ReferenceSegmentationMetric(_Accumulator):
    """Pooled confusion matrix (mIoU over classes with TP > 0) and batch-weighted pixel accuracy / err."""

    task = "segment_semantic"

    def __init__(
        self, num_classes: int, class_weights: Tensor | None = None, ignore_index: int = 255
    ) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights).double()
        super().__init__()

    def _reset_state(self) -> None:
        self.confusion: Tensor | None = None
        self.pixel_acc = _BatchWeighted()
        self.err = _BatchWeighted()

    def _init_state(self, device: torch.device) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of ``(B,C,H,W)`` logits against ``(B,H,W)`` integer labels (255 = ignore)."""
        if logits.dim() != 4 or logits.shape[1] != self.num_classes or not logits.dtype.is_floating_point:
            raise ValueError(
                f"{self.task}: expected (B,{self.num_classes},H,W) float logits, got {logits.dtype} "
                f"of shape {tuple(logits.shape)}"
            )
        if target.dtype.is_floating_point or target.dim() != 3:
            raise ValueError(f"{self.task}: target must be (B,H,W) integer labels, got {target.dtype}")
        if logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"{self.task}: logits shape {tuple(logits.shape)} does not match target {tuple(target.shape)}"
            )
        logits, target = self._to_state_device(logits, target)
        gt = target.long().reshape(-1)
        bad = (gt < 0) | ((gt >= self.num_classes) & (gt != self.ignore_index))
        if bool(bad.any()):
            raise ValueError(
                f"{self.task}: target label {int(gt[bad][0])} is outside [0, {self.num_classes}) and is not "
                f"ignore_index {self.ignore_index}"
            )
        valid = gt < self.num_classes
        gt = gt[valid]
        flat = logits.permute(0, 2, 3, 1).reshape(-1, self.num_classes)[valid]
        labels = flat.argmax(dim=1)
        n = self.num_classes
        assert self.confusion is not None
        self.confusion += torch.bincount(gt * n + labels, minlength=n * n).reshape(n, n)
        batch = int(target.shape[0])
        self.pixel_acc.add(_batch_mean((labels == gt).double()), batch)
        if self.class_weights is not None:
            weights = self.class_weights.to(flat.device)
            err = F.cross_entropy(flat.double(), gt, weight=weights) if gt.numel() else torch.tensor(math.nan)
            self.err.add(float(err), batch)

    @property
    def num_valid(self) -> int:
        return 0 if self.confusion is None else int(self.confusion.sum())

    def compute(self) -> dict[str, float]:
        """``err`` (Taskonomy only), ``miou`` over classes with TP > 0, batch-weighted ``pixel_acc``."""
        if self.confusion is None:
            raise _no_valid_pixels(self.task)
        cm = self.confusion.to(torch.float64)
        tp = cm.diagonal()
        union = cm.sum(dim=1) + cm.sum(dim=0) - tp
        hit = tp > 0
        miou = float((tp[hit] / union[hit]).mean()) if bool(hit.any()) else math.nan
        out = {"err": self.err.mean()} if self.class_weights is not None else {}
        out.update({"miou": miou, "pixel_acc": self.pixel_acc.mean()})
        return out


class ReferenceNormalMetric(NormalMetric):
    """Pooled angles between L2-normalised target and prediction; any channel = 255 marks a pixel invalid.

    ``encoded=True`` (NYU-v2): the uint8 target is normalised in its encoded space; ``False`` (Taskonomy):
    the float target is used as is, valid where finite, and ``cos_sim`` is reported first.
    """

    INCLUSIVE = True

    def __init__(self, encoded: bool) -> None:
        self.encoded = encoded
        super().__init__()

    def _reset_state(self) -> None:
        super()._reset_state()
        self.cos_sum = 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,3,H,W)`` predictions against ``(B,3,H,W)`` targets in the dataset's encoding."""
        _check_same_shape(self.task, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"{self.task}: expected (B,3,H,W) tensors, got shape {tuple(pred.shape)}")
        pred, target = self._to_state_device(pred, target)
        if self.encoded:
            if target.dtype.is_floating_point:
                raise ValueError(
                    f"{self.task}: NYU-v2 normals must be the uint8 encoding, got {target.dtype}"
                )
            valid = target.amax(dim=1) != ENCODED_INVALID
        else:
            valid = torch.isfinite(target).all(dim=1)
        g = target.permute(0, 2, 3, 1)[valid].to(torch.float64)
        p = pred.permute(0, 2, 3, 1)[valid].to(torch.float64)
        if g.shape[0] == 0:
            return
        cos = (F.normalize(g, dim=1) * F.normalize(p, dim=1)).sum(dim=1).clamp(-1.0, 1.0)
        self.cos_sum += float(cos.sum())
        self._add_angles(torch.rad2deg(torch.arccos(cos)))

    def compute(self) -> dict[str, float]:
        angles = super().compute()
        return angles if self.encoded else {"cos_sim": self.cos_sum / self.count, **angles}


class ReferenceDepthMetric(_Accumulator):
    """Batch-weighted abs/rel error and pooled δ (≤, negative predictions count as hits)."""

    task = "depth_zbuffer"
    THRESHOLDS: ClassVar[dict[str, float]] = {
        "delta_1_25": 1.25,
        "delta_1_25_2": 1.25**2,
        "delta_1_25_3": 1.25**3,
    }

    def __init__(self, log_units: bool) -> None:
        """``log_units=False``: NYU-v2 metres, valid > 3e-5, with δ; ``True``: Taskonomy, finite targets."""
        self.log_units = log_units
        super().__init__()

    def _reset_state(self) -> None:
        self.count = 0
        self.abs_err = _BatchWeighted()
        self.rel_err = _BatchWeighted()
        self.within = [0] * len(self.THRESHOLDS)

    def _init_state(self, device: torch.device) -> None:
        pass

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``(B,1,H,W)`` predictions against ``(B,1,H,W)`` targets."""
        _check_same_shape(self.task, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"{self.task}: expected (B,1,H,W) tensors, got shape {tuple(pred.shape)}")
        pred, target = self._to_state_device(pred, target)
        valid = torch.isfinite(target) if self.log_units else target > NYU_DEPTH_MIN
        g = target[valid].to(torch.float64)
        p = pred[valid].to(torch.float64)
        batch = int(target.shape[0])
        err = (p - g).abs()
        self.abs_err.add(_batch_mean(err), batch)
        self.rel_err.add(_batch_mean(err / g), batch)
        self.count += int(g.numel())
        if not self.log_units and g.numel():
            ratio = torch.maximum(p / g, g / p)  # negative when p < 0: passes `<=`, as in the reference
            for i, threshold in enumerate(self.THRESHOLDS.values()):
                self.within[i] += int((ratio <= threshold).sum())

    @property
    def num_valid(self) -> int:
        return self.count

    def compute(self) -> dict[str, float]:
        if self.abs_err.total == 0:
            raise _no_valid_pixels(self.task)
        out = {"abs_err": self.abs_err.mean(), "rel_err": self.rel_err.mean()}
        if not self.log_units:
            for name, hits in zip(self.THRESHOLDS, self.within, strict=True):
                out[name] = 100.0 * hits / self.count if self.count else math.nan
        return out


class ReferenceL1Metric(_Accumulator):
    """Keypoints / edges: per-batch mean |p − g| over finite targets, averaged by batch size."""

    def __init__(self, task: str) -> None:
        self.task = task
        super().__init__()

    def _reset_state(self) -> None:
        self.err = _BatchWeighted()
        self.count = 0

    def _init_state(self, device: torch.device) -> None:
        pass

    def update(self, pred: Tensor, target: Tensor) -> None:
        _check_same_shape(self.task, pred, target)
        pred, target = self._to_state_device(pred, target)
        valid = torch.isfinite(target)
        self.count += int(valid.sum())
        self.err.add(_batch_mean((pred[valid].double() - target[valid].double()).abs()), int(target.shape[0]))

    @property
    def num_valid(self) -> int:
        return self.count

    def compute(self) -> dict[str, float]:
        if self.err.total == 0:
            raise _no_valid_pixels(self.task)
        return {"err": self.err.mean()}


ReferenceMetric = (
    ReferenceSegmentationMetric | ReferenceNormalMetric | ReferenceDepthMetric | ReferenceL1Metric
)
