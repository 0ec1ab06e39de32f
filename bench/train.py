"""The budgeted trainer shared by the dense stage, finetuning and every method.

One optimizer step per batch; the LR schedule and the optimizer come from a TrainSpec. Masked weights get
zero gradient before the step and are re-zeroed after it, so pruned weights stay exactly zero under any
optimizer (including coupled weight decay and momentum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import batch_stream, eval_batches
from bench.models.mtl import MTLModel
from bench.sparsity import Masks, apply_masks
from bench.spec import TrainSpec
from bench.tasks import LossFn, make_losses

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


class StepRunner:
    """One optimizer step on a batch: forward, weighted task losses, backward, masked update.

    Masks are converted once to the parameters' dtype and device, so holding them costs two in-place
    multiplies per masked tensor and step (gradient before the update, weight after it).
    """

    def __init__(
        self,
        model: MTLModel,
        dataset_name: str,
        spec: TrainSpec,
        device: torch.device,
        masks: Masks | None = None,
        class_weights: Tensor | None = None,
        protocol: str = "standard",
    ) -> None:
        self.model, self.dataset_name, self.spec = model.to(device).train(), dataset_name, spec
        # Dataset state (Taskonomy's segmentation class weights) is bound into the losses once, on device.
        self.class_weights = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).to(device)
        )
        self.losses = make_losses(dataset_name, model.tasks, self.class_weights, protocol)
        self.weights = {t: (spec.task_weights or {}).get(t, 1.0) for t in model.tasks}
        params = model.prunable_parameters()
        self.masked: list[tuple[nn.Parameter, Tensor]] = []
        if masks:
            apply_masks(params, masks)
            self.masked = [(params[n], m.to(device=device, dtype=params[n].dtype)) for n, m in masks.items()]
        self.masked_params = [p for p, _ in self.masked]
        self.masked_masks = [m for _, m in self.masked]
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.spec.lr * lr_factor(self.spec, step)
        outputs = self.model(batch["input"])
        losses = {t: self.losses[t](outputs[t], batch[t]) for t in self.model.tasks}
        total = sum(self.weights[t] * losses[t] for t in self.model.tasks)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.masked:
            with torch.no_grad():  # fused multi-tensor multiplies: one dispatch for all masked tensors
                with_grad = [(p.grad, m) for p, m in self.masked if p.grad is not None]
                torch._foreach_mul_([g for g, _ in with_grad], [m for _, m in with_grad])
        self.optimizer.step()
        if self.masked:
            with torch.no_grad():
                torch._foreach_mul_(self.masked_params, self.masked_masks)
        return {
            "loss": float(total.detach()),
            **{f"loss.{t}": float(v.detach()) for t, v in losses.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
        }


@dataclass(frozen=True)
class TrainResult:
    steps: int
    selected_step: int  # the step whose weights the model ends with (the last one under "last")
    val_loss: float | None = None


@torch.no_grad()
def validation_loss(
    model: MTLModel,
    val_set: Any,
    dataset_name: str,
    weights: Mapping[str, float],
    batch_size: int,
    device: torch.device,
    losses: Mapping[str, LossFn] | None = None,
    protocol: str = "standard",
) -> float:
    """Sample-weighted mean of the weighted multi-task loss over the validation split (eval mode).

    ``losses`` are the trainer's bound losses (same objective, same class weights); by default they are
    built from ``dataset_name`` and the split's ``class_weights`` attribute when it has one.
    """
    if losses is None:
        losses = make_losses(dataset_name, model.tasks, getattr(val_set, "class_weights", None), protocol)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(val_set, batch_size):
        batch = to_device(batch, device)
        outputs = model(batch["input"])
        loss = sum(weights[t] * losses[t](outputs[t], batch[t]) for t in model.tasks)
        total += float(loss) * batch["input"].shape[0]
        count += batch["input"].shape[0]
    model.train(was_training)
    return total / count


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
    val_set: Any = None,
    selection: str = "last",
    val_every: int = 50,
    num_workers: int = 0,
    protocol: str = "standard",
) -> TrainResult:
    """Run `spec.steps` optimizer steps; with ``selection="best_val"`` end on the weights of the step with
    the lowest validation loss (evaluated every `val_every` steps and after the last one)."""
    if selection == "best_val" and val_set is None:
        raise ValueError("selection 'best_val' needs a validation split (data.val_fraction > 0)")
    class_weights = getattr(train_set, "class_weights", None)
    step_runner = StepRunner(
        model, dataset_name, spec, device, masks, class_weights=class_weights, protocol=protocol
    )
    torch.manual_seed(seed)  # dropout draws
    stream = batch_stream(train_set, spec.batch_size, seed, steps=spec.steps, num_workers=num_workers)
    best: tuple[float, int, dict[str, Tensor]] | None = None
    for step, batch in zip(range(spec.steps), stream, strict=False):
        scalars = step_runner(to_device(batch, device), step)
        if selection == "best_val" and ((step + 1) % val_every == 0 or step + 1 == spec.steps):
            loss = validation_loss(
                model,
                val_set,
                dataset_name,
                step_runner.weights,
                spec.batch_size,
                device,
                losses=step_runner.losses,
            )
            scalars["val_loss"] = loss
            if best is None or loss < best[0]:
                best = (
                    loss,
                    step,
                    {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                )
        if on_step is not None:
            on_step(step, scalars)
    if best is None:
        return TrainResult(steps=spec.steps, selected_step=spec.steps - 1)
    model.load_state_dict(best[2])
    return TrainResult(steps=spec.steps, selected_step=best[1], val_loss=best[0])
