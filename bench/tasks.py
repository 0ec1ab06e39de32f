"""Task losses for the `standard` protocol, computed at label resolution.

Predictions come out of the heads at backbone resolution (stride 8 for Deeplab-ResNet34); they are
upsampled bilinearly to the label size before the loss, so losses and metrics see the same pixels. (The
AdapMTL reference instead downsamples labels with nearest neighbour; that belongs to its own protocol.)
"""

from __future__ import annotations

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


NYUV2_LOSSES = {
    "segment_semantic": segmentation_loss,
    "normal": normal_loss,
    "depth_zbuffer": depth_loss,
}
LOSSES = {"nyuv2": NYUV2_LOSSES}


def task_loss(dataset: str, task: str, pred: Tensor, target: Tensor) -> Tensor:
    try:
        fn = LOSSES[dataset][task]
    except KeyError:
        raise KeyError(f"no loss for task {task!r} of dataset {dataset!r}; known: {sorted(LOSSES)}") from None
    return fn(pred, target)
