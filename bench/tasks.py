"""Task losses for the `standard` protocol, computed at label resolution.

Predictions come out of the heads at backbone resolution (stride 8 for Deeplab-ResNet34); they are
upsampled bilinearly to the label size before the loss, so losses and metrics see the same pixels. (The
AdapMTL reference instead downsamples labels with nearest neighbour; that belongs to its own protocol.)

Tiny-Taskonomy targets arrive decoded by the loader: ``segment_semantic`` int64 labels 0..16 with 255 =
ignore, float ``normal`` in [−1, 1], ``depth_zbuffer`` = log(1+d)/log(2^16), ``keypoints2d`` and
``edge_texture`` in [−1, 1], every float target NaN on invalid or padded pixels. Its segmentation loss is
weighted by the dataset's ``class_weights`` (semseg_prior_factor.npy), the one piece of dataset state a loss
needs; :func:`make_losses` binds it once so the trainer's hot loop stays a plain ``fn(pred, target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


def upsample_to(pred: Tensor, target: Tensor) -> Tensor:
    size = tuple(target.shape[-2:])
    if tuple(pred.shape[-2:]) == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def decode_nyu_normals(encoded: Tensor) -> tuple[Tensor, Tensor]:
    """uint8 (B,3,H,W) NYU encoding → unit-scale vectors v/127.5 − 1 and the valid mask (not all 255)."""
    valid = ~(encoded == IGNORE).all(dim=1)
    return encoded.float() / 127.5 - 1.0, valid


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    count = valid.sum()
    if count == 0:
        return values.sum() * 0.0  # keeps the graph; a crop with no valid pixel contributes nothing
    return values[valid].sum() / count


def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    pred = upsample_to(pred, target)
    if (target != IGNORE).sum() == 0:
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target.long(), ignore_index=IGNORE)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 − mean cosine similarity between unit prediction and decoded ground truth, over valid pixels."""
    pred = upsample_to(pred, target)
    gt, valid = decode_nyu_normals(target)
    cos = F.cosine_similarity(pred, gt, dim=1, eps=1e-8)
    return 1.0 - _masked_mean(cos, valid)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over pixels with valid (positive, finite) depth."""
    pred = upsample_to(pred, target)
    valid = (target > 0) & torch.isfinite(target)
    return _masked_mean((pred - target).abs(), valid)


def _finite_target(target: Tensor) -> tuple[Tensor, Tensor]:
    """NaN-marked float target → (target with invalid pixels zeroed, per-pixel validity over channels).

    Zeroing matters: a NaN left in the target poisons the gradient (0 · NaN = NaN) even where it is masked.
    """
    valid = torch.isfinite(target).all(dim=1, keepdim=True)
    return torch.where(valid, target, torch.zeros_like(target)), valid


def taskonomy_segmentation_loss(pred: Tensor, target: Tensor, class_weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy (PyTorch's weighted mean over non-ignored pixels), ignore 255."""
    pred = upsample_to(pred, target)
    if (target != IGNORE).sum() == 0:
        return pred.sum() * 0.0
    weight = class_weights.to(device=pred.device, dtype=pred.dtype)
    return F.cross_entropy(pred, target.long(), weight=weight, ignore_index=IGNORE)


def taskonomy_normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 − mean cosine similarity over pixels whose target is finite in all three channels."""
    pred = upsample_to(pred, target)
    gt, valid = _finite_target(target)
    cos = F.cosine_similarity(pred, gt, dim=1, eps=1e-8)
    return 1.0 - _masked_mean(cos, valid[:, 0])


def taskonomy_l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over finite-target pixels (depth, keypoints2d, edge_texture; the reference's "gt ≠ 255")."""
    pred = upsample_to(pred, target)
    gt, valid = _finite_target(target)
    return _masked_mean((pred - gt).abs(), valid.expand_as(gt))


LossFn = Callable[[Tensor, Tensor], Tensor]

NYUV2_LOSSES: dict[str, LossFn] = {
    "segment_semantic": segmentation_loss,
    "normal": normal_loss,
    "depth_zbuffer": depth_loss,
}
TASKONOMY_LOSSES: dict[str, LossFn] = {
    "normal": taskonomy_normal_loss,
    "depth_zbuffer": taskonomy_l1_loss,
    "keypoints2d": taskonomy_l1_loss,
    "edge_texture": taskonomy_l1_loss,
}  # segment_semantic is built by make_losses: it needs the class weights
LOSSES: dict[str, dict[str, LossFn]] = {"nyuv2": NYUV2_LOSSES, "taskonomy": TASKONOMY_LOSSES}
_WEIGHTED = {("taskonomy", "segment_semantic")}  # (dataset, task) pairs whose loss takes class_weights


def make_losses(dataset: str, tasks: Sequence[str], class_weights: Tensor | None = None) -> dict[str, LossFn]:
    """Task → ``fn(pred, target)`` for one dataset, with dataset state (class weights) bound in.

    Fails loudly rather than silently training a different objective: Taskonomy segmentation without
    class weights, or class weights given to a dataset whose losses never use them (a Taskonomy task subset
    without segmentation simply ignores them, since its loader always carries them).
    """
    if dataset not in LOSSES:
        raise KeyError(f"no losses for dataset {dataset!r}; known: {sorted(LOSSES)}")
    if class_weights is not None and not any(d == dataset for d, _ in _WEIGHTED):
        raise ValueError(f"class_weights were given but no loss of dataset {dataset!r} uses them")
    losses: dict[str, LossFn] = {}
    for task in tasks:
        if (dataset, task) in _WEIGHTED:
            if class_weights is None:
                raise ValueError(f"the {dataset} {task} loss needs the dataset's class_weights")
            losses[task] = partial(taskonomy_segmentation_loss, class_weights=class_weights)
            continue
        try:
            losses[task] = LOSSES[dataset][task]
        except KeyError:
            known = sorted({*LOSSES[dataset], *(t for d, t in _WEIGHTED if d == dataset)})
            raise KeyError(f"no loss for task {task!r} of dataset {dataset!r}; known: {known}") from None
    return losses


def task_loss(
    dataset: str, task: str, pred: Tensor, target: Tensor, class_weights: Tensor | None = None
) -> Tensor:
    """One task's loss; convenient for tests and one-off calls (the trainer binds :func:`make_losses`)."""
    return make_losses(dataset, [task], class_weights)[task](pred, target)
