"""Evaluation under the `standard` protocol: predictions upsampled bilinearly to the label resolution."""

from __future__ import annotations

from typing import Any

import torch

from bench.data import eval_batches
from bench.metrics import nyuv2_metric
from bench.models.mtl import MTLModel
from bench.tasks import upsample_to
from bench.train import to_device


@torch.no_grad()
def evaluate(model: MTLModel, test_set: Any, batch_size: int, device: torch.device) -> dict[str, float]:
    """`<task>.<metric>` → value over the whole test split (pooled statistics)."""
    model.to(device).eval()
    metrics = {task: nyuv2_metric(task) for task in model.tasks}
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
