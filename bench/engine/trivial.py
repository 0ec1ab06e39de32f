"""The trivial predictor: the best constant prediction per task, the floor a trained model must clear.

Per task one constant output vector, fitted on the training split by minimising that task's own training loss
(the run's dataset and protocol), then evaluated exactly like a model. The constant that minimises each loss
is the textbook trivial predictor: cross-entropy gives the class prior (its argmax is the majority class), L1
gives the median depth, the cosine loss gives the mean normal direction. Fitting instead of writing each
closed form keeps it right for every dataset, protocol and loss (weighted cross-entropy, encoded normals,
log depth) without a table to keep in sync.

Its metrics go into the dense result (``trivial_metrics``): the report shows the headroom a dense model has
over it, and mtlprune.engine.divergence calls an error metric more than 10× the trivial one absurd.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtlprune.engine.data import batch_stream
from mtlprune.engine.tasks import make_losses

FIT_STEPS = 100
FIT_BATCH = 16
FIT_LR = 0.1
FIT_SEED = 4_099


class ConstantPredictor(nn.Module):
    """A model whose every output pixel is one learned vector per task (the same for every input)."""

    def __init__(self, channels: Mapping[str, int]) -> None:
        super().__init__()
        self.tasks = tuple(channels)
        # Not zero: a zero vector has no direction for the cosine losses of normals.
        self.values = nn.ParameterDict({t: nn.Parameter(torch.full((c,), 0.5)) for t, c in channels.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b, _, h, w = x.shape
        return {t: v.view(1, -1, 1, 1).expand(b, -1, h, w) for t, v in self.values.items()}


def fit_trivial(
    dataset_name: str,
    channels: Mapping[str, int],
    train_set: Any,
    protocol: str = "standard",
    steps: int = FIT_STEPS,
) -> ConstantPredictor:
    """Fit each task's constant by Adam on seeded training batches (cosine LR decay to 0); CPU, no dropout."""
    model = ConstantPredictor(channels)
    losses = make_losses(dataset_name, model.tasks, getattr(train_set, "class_weights", None), protocol)
    optimizer = torch.optim.Adam(model.parameters(), lr=FIT_LR)
    batches = batch_stream(train_set, min(FIT_BATCH, len(train_set)), FIT_SEED, steps=steps)
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = FIT_LR * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        outputs = model(batch["input"])
        total = sum(losses[t](outputs[t], batch[t]) for t in model.tasks)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return model
