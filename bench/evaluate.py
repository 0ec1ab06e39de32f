"""Evaluation under the `standard` protocol: predictions upsampled bilinearly to the label resolution.

The dataset's metric set is chosen by its registry name (``nyuv2``, ``taskonomy``), read from the test set
unless given; Taskonomy's segmentation ``err`` takes the test set's ``class_weights``.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.data import eval_batches
from bench.metrics import make_metric
from bench.models.mtl import MTLModel
from bench.tasks import upsample_to
from bench.train import to_device


@torch.no_grad()
def evaluate(
    model: MTLModel,
    test_set: Any,
    batch_size: int,
    device: torch.device,
    dataset: str | None = None,
) -> dict[str, float]:
    """`<task>.<metric>` → value over the whole test split (pooled statistics).

    ``dataset`` defaults to the test set's ``registry_name`` (set by ``DATASETS.register``), else ``nyuv2``.
    """
    if dataset is None:
        dataset = getattr(test_set, "registry_name", "nyuv2")
    class_weights = getattr(test_set, "class_weights", None)
    model.to(device).eval()
    metrics = {task: make_metric(dataset, task, class_weights) for task in model.tasks}
    for batch in eval_batches(test_set, batch_size):
        batch = to_device(batch, device)
        outputs = model(batch["input"])
        for task, metric in metrics.items():
            metric.update(upsample_to(outputs[task], batch[task]), batch[task])
    return {
        f"{task}.{name}": value
        for task, metric in metrics.items()
        for name, value in metric.compute().items()
    }
