"""The budgeted trainer shared by the dense stage, finetuning and every method.

One optimizer step per batch; the LR schedule and the optimizer come from a TrainSpec. Masked weights get
zero gradient before the step and are re-zeroed after it, so pruned weights stay exactly zero under any
optimizer (including coupled weight decay and momentum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import batch_stream
from bench.models.mtl import MTLModel
from bench.sparsity import Masks, apply_masks
from bench.spec import TrainSpec
from bench.tasks import task_loss

StepCallback = Callable[[int, dict[str, float]], None]


def make_optimizer(params: list[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        # torch Adam's weight_decay is coupled L2 (added to the gradient), as in the AdapMTL reference.
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def lr_factor(spec: TrainSpec, step: int) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if spec.lr_schedule == "constant":
        return 1.0
    if spec.lr_schedule == "step":
        period = spec.lr_step or max(1, spec.steps // 5)
        return spec.lr_gamma ** (step // period)
    return 0.5 * (1.0 + math.cos(math.pi * step / spec.steps))


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def train(
    model: MTLModel,
    *,
    dataset_name: str,
    train_set: Any,
    spec: TrainSpec,
    seed: int,
    device: torch.device,
    masks: Masks | None = None,
    on_step: StepCallback | None = None,
) -> int:
    """Run `spec.steps` optimizer steps; returns the number of steps taken."""
    model.to(device).train()
    params = model.prunable_parameters()
    if masks:
        masks = {n: m.to(device) for n, m in masks.items()}
        apply_masks(params, masks)
    weights = {t: (spec.task_weights or {}).get(t, 1.0) for t in model.tasks}
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)
    torch.manual_seed(seed)  # dropout draws
    stream = batch_stream(train_set, spec.batch_size, seed)
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(spec, step)
        batch = to_device(next(stream), device)
        outputs = model(batch["input"])
        losses = {t: task_loss(dataset_name, t, outputs[t], batch[t]) for t in model.tasks}
        total = sum(weights[t] * losses[t] for t in model.tasks)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if masks:
            for name, mask in masks.items():
                if params[name].grad is not None:
                    params[name].grad.mul_(mask)
        optimizer.step()
        if masks:
            apply_masks(params, masks)
        if on_step is not None:
            scalars = {
                "loss": float(total.detach()),
                **{f"loss.{t}": float(v.detach()) for t, v in losses.items()},
            }
            scalars["lr"] = optimizer.param_groups[0]["lr"]
            on_step(step, scalars)
    return spec.steps
