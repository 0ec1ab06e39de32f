"""Task metrics under each evaluation protocol, and :func:`compute` to check them against any other code.

``standard`` (:mod:`mtlprune.engine.metrics.standard`) pools every statistic over the split; ``adapmtl``
(:mod:`mtlprune.engine.metrics.adapmtl`) reproduces the AdapMTL reference evaluation, quirks included.
docs/protocols.md lists every difference. Both report the column names of the dataset's vocabulary
(``mtlprune.vocabulary.METRICS``); which accumulator measures which task is the dataset plugin's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from mtlprune.engine.metrics.adapmtl import (
    ReferenceDepthMetric,
    ReferenceL1Metric,
    ReferenceNormalMetric,
    ReferenceSegmentationMetric,
)
from mtlprune.engine.metrics.standard import (
    CosineNormalMetric,
    DepthMetric,
    L1Metric,
    LogDepthMetric,
    NormalMetric,
    SegmentationMetric,
    WeightedSegmentationMetric,
)
from mtlprune.registry import DATASETS
from mtlprune.vocabulary import PROTOCOLS, check_protocol

__all__ = [
    "PROTOCOLS",
    "CosineNormalMetric",
    "DepthMetric",
    "L1Metric",
    "LogDepthMetric",
    "NormalMetric",
    "ReferenceDepthMetric",
    "ReferenceL1Metric",
    "ReferenceNormalMetric",
    "ReferenceSegmentationMetric",
    "SegmentationMetric",
    "WeightedSegmentationMetric",
    "compute",
    "make_metric",
    "resize_prediction",
]


def make_metric(dataset: str, task: str, class_weights: Tensor | None = None, protocol: str = "standard"):
    """A fresh accumulator for ``task`` of ``dataset`` under ``protocol`` (``update``, then ``compute``): the
    dataset plugin chooses it (its ``metric`` classmethod, docs/adding_a_dataset.md)."""
    check_protocol(protocol)
    return DATASETS.get(dataset).metric(task, protocol, class_weights)


def resize_prediction(pred: Tensor, target: Tensor, protocol: str = "standard") -> Tensor:
    """A prediction at the label's resolution: bilinear (standard) or nearest (adapmtl, as the reference)."""
    check_protocol(protocol)
    size = tuple(target.shape[-2:])
    if tuple(pred.shape[-2:]) == size:
        return pred
    if protocol == "adapmtl":
        return F.interpolate(pred, size=size, mode="nearest")
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def compute(
    dataset: str,
    task: str,
    preds: Tensor | Sequence[Tensor],
    targets: Tensor | Sequence[Tensor],
    protocol: str = "standard",
    class_weights: Tensor | None = None,
) -> dict[str, float]:
    """The metric dict of one task over a split, for predictions against targets in the dataset's encoding.

    ``preds`` / ``targets`` are one batch (a tensor with a leading batch dimension) or a sequence of batches
    in evaluation order; under ``adapmtl`` the batching matters (per-batch averages weighted by batch size),
    under ``standard`` it does not. Predictions are raw head outputs (logits, unnormalised normals, depth)
    at any resolution; they are resized to each target's resolution as the protocol prescribes. Targets are
    what the dataset's loader returns (NYU-v2: seg int labels with 255 = ignore, uint8-encoded normals, depth
    in metres with 0 = invalid; Taskonomy: labels 0..16 / 255, float targets with NaN = invalid).
    Taskonomy segmentation needs the dataset's ``class_weights`` (semseg_prior_factor).
    """
    if isinstance(preds, Tensor) != isinstance(targets, Tensor):
        raise TypeError("preds and targets must both be tensors or both be sequences of batch tensors")
    pred_batches = [preds] if isinstance(preds, Tensor) else list(preds)
    target_batches = [targets] if isinstance(targets, Tensor) else list(targets)
    if len(pred_batches) != len(target_batches):
        raise ValueError(f"{len(pred_batches)} prediction batches but {len(target_batches)} target batches")
    if not pred_batches:
        raise ValueError("no batches given")
    metric = make_metric(dataset, task, class_weights, protocol)
    for pred, target in zip(pred_batches, target_batches, strict=True):
        metric.update(resize_prediction(pred, target, protocol), target)
    return metric.compute()
