"""Evaluation of a trained model on the test split under the run's protocol.

``standard``: the test split at its native resolution, predictions upsampled bilinearly to the labels,
pooled metrics. ``adapmtl``: as the AdapMTL reference evaluates — test inputs and labels at the dataset's
``reference_eval_size`` (NYU-v2 321×321, Taskonomy 224×224), batches of 16, predictions upsampled with
nearest neighbour, and the reference's metric quirks (:mod:`mtlprune.engine.metrics.adapmtl`). The loaders
of the registered datasets already resize an ``adapmtl`` test split the reference's way (OpenCV's uint8
bilinear for the image, nearest for labels: mtlprune.datasets.cvresize, docs/protocols.md); a test set that
comes at another size (a plugin dataset) is resized here, the input bilinearly in float, labels nearest.

The dataset plugin chooses each task's metric (``make_metric``); its registry name is read from the test set
unless given, and a test set's ``class_weights`` (Taskonomy's segmentation ``err``) go along.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mtlprune.engine.data import eval_batches
from mtlprune.engine.metrics import make_metric, resize_prediction
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.tasks import resize_label
from mtlprune.engine.train import to_device


def resize_batch(batch: dict[str, Any], tasks: tuple[str, ...], size: tuple[int, int]) -> dict[str, Any]:
    """The batch at ``size`` (input bilinear in float, labels nearest), for a test set not already there."""
    out = dict(batch)
    image = batch["input"]
    if tuple(image.shape[-2:]) != size:
        out["input"] = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    for task in tasks:
        out[task] = resize_label(batch[task], size)
    return out


@torch.no_grad()
def evaluate(
    model: MTLModel,
    test_set: Any,
    batch_size: int,
    device: torch.device,
    dataset: str | None = None,
    protocol: str = "standard",
) -> dict[str, float]:
    """`<task>.<metric>` → value over the whole test split.

    ``dataset`` defaults to the test set's ``registry_name`` (set by ``DATASETS.register``).
    """
    if dataset is None:
        dataset = getattr(test_set, "registry_name", None)
        if dataset is None:
            raise ValueError(
                f"evaluate: the test set ({type(test_set).__name__}) is not a registered dataset (no "
                "registry_name); pass dataset= to name whose metrics to use"
            )
    class_weights = getattr(test_set, "class_weights", None)
    eval_size = getattr(test_set, "reference_eval_size", None) if protocol == "adapmtl" else None
    if protocol == "adapmtl" and eval_size is None:
        raise ValueError(f"dataset {dataset!r} defines no reference_eval_size for the 'adapmtl' protocol")
    model.to(device).eval()
    metrics = {task: make_metric(dataset, task, class_weights, protocol) for task in model.tasks}
    for batch in eval_batches(test_set, batch_size):
        batch = to_device(batch, device)
        if eval_size is not None:
            batch = resize_batch(batch, model.tasks, tuple(eval_size))
        outputs = model(batch["input"])
        for task, metric in metrics.items():
            metric.update(resize_prediction(outputs[task], batch[task], protocol), batch[task])
    return {
        f"{task}.{name}": value
        for task, metric in metrics.items()
        for name, value in metric.compute().items()
    }
