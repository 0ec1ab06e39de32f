"""The budgeted trainer shared by the dense stage, finetuning and every method.

One optimizer step per batch; the LR schedule and the optimizer come from a TrainSpec. Masked weights get
zero gradient before the step and are re-zeroed after it, so pruned weights stay exactly zero under any
optimizer (including coupled weight decay and momentum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlprune.engine.checkpoint import CallCheckpoint, rng_state, set_rng_state
from mtlprune.engine.data import batch_stream, eval_batches
from mtlprune.engine.divergence import Divergence, DivergenceGuard
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import Masks, apply_masks
from mtlprune.engine.tasks import LossFn, make_losses
from mtlprune.spec import TrainSpec

StepCallback = Callable[[int, dict[str, float]], None]


def make_optimizer(
    params: list[nn.Parameter] | list[dict[str, Any]], spec: TrainSpec
) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        # torch Adam's weight_decay is coupled L2 (added to the gradient), as in the AdapMTL reference.
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


@dataclass(frozen=True)
class ParamGroup:
    """Parameters a method trains with a learning rate, weight decay or gradient clip of their own.

    ``lr`` is the group's base LR (the recipe's LR schedule multiplies it, as it multiplies the recipe's
    ``lr``); None: the recipe's. ``weight_decay`` None: the recipe's. ``max_grad_norm``: the group's
    gradients are clipped to this total L2 norm after masking, before the update (None: no clip).
    """

    name: str
    params: tuple[nn.Parameter, ...]
    lr: float | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class Optimization:
    """A method's own optimizer setup for one ``ctx.train`` call: only the parameters of ``groups`` train
    (every other parameter stays as it is), with ``algorithm`` ``recipe`` (the recipe's Adam or SGD) or
    ``adamw`` (decoupled weight decay, ``betas``/``eps``). The default setup trains every parameter that
    requires a gradient in one group with the recipe's optimizer."""

    groups: tuple[ParamGroup, ...]
    algorithm: Literal["recipe", "adamw"] = "recipe"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(self, spec: TrainSpec) -> torch.optim.Optimizer:
        groups = [
            {
                "params": list(g.params),
                "lr": spec.lr if g.lr is None else g.lr,
                "weight_decay": spec.weight_decay if g.weight_decay is None else g.weight_decay,
            }
            for g in self.groups
        ]
        if self.algorithm == "adamw":
            return torch.optim.AdamW(groups, lr=spec.lr, betas=self.betas, eps=self.eps)
        return make_optimizer(groups, spec)


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


class TrainCallback:
    """Hooks a method attaches to training (every one optional); see docs/adding_a_method.md.

    - ``loss_weights(step, losses)``: per-task loss weights for this step (task-loss weighting methods);
      ``None`` keeps the recipe's fixed ``task_weights``.
    - ``after_backward(step, runner)``: gradients of every weight are present and **not yet masked** (the
      dense gradient a regrowth criterion needs); ``runner.set_masks`` may change the masks here.
    - ``after_step(step, runner)``: after the optimizer step and mask re-application; may change the masks
      (gradual pruning) and may return scalars to log for this step.
    - ``extra_loss(step, outputs)``: named loss terms added to the weighted task loss of this step before
      the backward pass (penalties: ECS's L0 gate and activation-L1 terms); logged as ``extra.<name>``.
    """

    def loss_weights(self, step: int, losses: Mapping[str, Tensor]) -> Mapping[str, float] | None:
        return None

    def after_backward(self, step: int, runner: StepRunner) -> None:
        return None

    def after_step(self, step: int, runner: StepRunner) -> Mapping[str, float] | None:
        return None

    def extra_loss(self, step: int, outputs: Mapping[str, Tensor]) -> Mapping[str, Tensor] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """The callback's own state that later steps depend on (schedules, windows, counters, ...).

        Saved in every in-stage checkpoint and restored on resume (bench/engine/checkpoint.py): a stateful
        callback must return everything its future behaviour depends on, as tensors and plain containers.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class StepRunner:
    """One optimizer step of the weighted multi-task loss, with masks held fixed (or changed by callbacks).

    Masks are converted once to the parameters' dtype and device. Holding them costs one in-place multiply
    per masked tensor and step, of the gradient before the update: a pruned weight is zero, its gradient is
    masked to zero and its optimizer state is zeroed when the mask is set (and when a checkpoint is
    loaded), so no update of Adam, AdamW or SGD (momentum, coupled or decoupled weight decay) moves it, and
    the weights need no second multiply after the update (docs/accounting.md, "Masked training").
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
        callbacks: Sequence[TrainCallback] = (),
        step_offset: int = 0,
        schedule: TrainSpec | None = None,
        channels_last: bool = False,
        guard: DivergenceGuard | None = None,
        optimization: Optimization | None = None,
    ) -> None:
        self.model, self.dataset_name, self.spec = model.to(device).train(), dataset_name, spec
        self.guard = guard
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Mixed precision: autocast the forward pass and the losses; fp16 also scales the loss so that small
        # gradients survive (bf16 has fp32's range and needs no scaler). Masks and the update stay in fp32.
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.amp]
        self.scaler = torch.amp.GradScaler(device.type) if spec.amp == "fp16" else None
        self.device, self.callbacks, self.step_offset = device, tuple(callbacks), step_offset
        # The LR schedule (base LR, shape, horizon) comes from `schedule`, by default the spec trained with;
        # rewinding methods replay a longer recipe's schedule from `step_offset`.
        self.schedule = schedule or spec
        # Dataset state (Taskonomy's segmentation class weights) is bound into the losses once, on device.
        self.class_weights = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).to(device)
        )
        self.losses = make_losses(dataset_name, model.tasks, self.class_weights, protocol)
        self.weights = {t: (spec.task_weights or {}).get(t, 1.0) for t in model.tasks}
        self.params = model.prunable_parameters()
        self.masks: Masks | None = None
        self.masked: list[tuple[nn.Parameter, Tensor]] = []
        if masks:
            self.set_masks(masks)
        # Each optimizer group's base LR, which the schedule multiplies (the schedule's lr unless a method's
        # group has its own), and the groups whose gradients are clipped.
        self.clipped: list[tuple[list[nn.Parameter], float]] = []
        if optimization is None:
            self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)
            self.base_lrs = [self.schedule.lr]
        else:
            self.optimizer = optimization.build(spec)
            self.base_lrs = [self.schedule.lr if g.lr is None else g.lr for g in optimization.groups]
            self.clipped = [(list(g.params), g.max_grad_norm) for g in optimization.groups if g.max_grad_norm]

    def set_masks(self, masks: Masks) -> None:
        """Hold ``masks`` from now on (pruned weights and their optimizer state are zeroed at once); a
        callback may call this."""
        apply_masks(self.params, masks)
        self.masks = {n: m.detach().to(torch.bool).cpu() for n, m in masks.items()}
        self.masked = [
            (self.params[n], m.to(device=self.device, dtype=self.params[n].dtype)) for n, m in masks.items()
        ]
        self._zero_pruned_state()

    @torch.no_grad()
    def _zero_pruned_state(self) -> None:
        """Zero the optimizer state (Adam's moments, SGD's momentum) of every pruned weight, so that the
        masked gradient alone keeps the weight at zero. None before the first step (the state is created
        zero then)."""
        optimizer = getattr(self, "optimizer", None)  # set_masks in __init__ runs before it exists
        if optimizer is None:
            return
        for param, mask in self.masked:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    value.masked_fill_(mask == 0, 0.0)

    @torch.no_grad()
    def check_masks_held(self) -> None:
        """Raise if a pruned weight is not zero: something outside the step (a callback, a load) wrote it,
        and the masked gradient alone would not bring it back."""
        for name, mask in (self.masks or {}).items():
            moved = int(torch.count_nonzero(self.params[name].detach()[~mask.to(self.device)]))
            if moved:
                raise RuntimeError(
                    f"{moved} pruned weight(s) of {name} are not zero after training: they were written "
                    "outside the optimizer step (set them through StepRunner.set_masks)"
                )

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, float]:
        factor = lr_factor(self.schedule, step + self.step_offset)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        inputs = batch["input"]
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.model(inputs)
            # The tasks the model computed (all, unless a model trains some of its tasks at a time: ECS)
            tasks = [t for t in self.model.tasks if t in outputs]
            losses = {t: self.losses[t](outputs[t], batch[t]).float() for t in tasks}
        weights = self.weights
        for callback in self.callbacks:
            weights = callback.loss_weights(step, losses) or weights
        total = sum(weights[t] * losses[t] for t in tasks)
        extras: dict[str, Tensor] = {}
        for callback in self.callbacks:
            extras.update(callback.extra_loss(step, outputs) or {})
        for term in extras.values():
            total = total + term
        loss_value = float(total.detach())
        task_values = {t: float(v.detach()) for t, v in losses.items()}
        if not math.isfinite(loss_value):
            bad = {t: v for t, v in task_values.items() if not math.isfinite(v)}
            raise Divergence(
                f"non-finite loss {loss_value} at step {step}"
                + (f" (task losses {bad})" if bad else " (weighted sum of finite task losses)"),
                step=step,
                losses=task_values,
            )
        if self.guard is not None:
            self.guard.check(step, task_values, last=step + 1 == self.spec.steps)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)  # callbacks and masking see true gradients
        else:
            total.backward()
        for callback in self.callbacks:
            callback.after_backward(step, self)
        if self.masked:
            with torch.no_grad():  # fused multi-tensor multiplies: one dispatch for all masked tensors
                with_grad = [(p.grad, m) for p, m in self.masked if p.grad is not None]
                if with_grad:  # none when the masked tensors are outside this call's forward (ECS)
                    torch._foreach_mul_([g for g, _ in with_grad], [m for _, m in with_grad])
        for params, max_norm in self.clipped:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed; the scale then drops
            self.scaler.update()
        else:
            self.optimizer.step()
        scalars = {
            "loss": loss_value,
            **{f"loss.{t}": v for t, v in task_values.items()},
            **{f"extra.{name}": float(v.detach()) for name, v in extras.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if weights is not self.weights:
            scalars.update({f"weight.{t}": float(w) for t, w in weights.items()})
        for callback in self.callbacks:
            scalars.update(callback.after_step(step, self) or {})
        return scalars

    @torch.no_grad()
    def end_losses(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """Each task's loss of the weights as they are now on ``batch``, measured as a step measures it
        (training mode, the same autocast), leaving no trace: every buffer (BN running statistics, a delta
        model's gate draws) and every RNG are put back, so the run goes on exactly as without it.

        What the divergence guard checks after a call's last update, which no step of the call saw.
        """
        saved = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
        rng = rng_state()
        try:
            inputs = batch["input"]
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs = self.model(inputs)
                tasks = [t for t in self.model.tasks if t in outputs]
                return {t: float(self.losses[t](outputs[t], batch[t]).float()) for t in tasks}
        finally:
            for buffer, value in saved:
                buffer.copy_(value)
            set_rng_state(rng)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, gradient scaler, held masks and callbacks: the runner's part of a checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "masks": self.masks,
            "callbacks": [callback.state_dict() for callback in self.callbacks],
            "guard": None if self.guard is None else self.guard.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["masks"] is not None:
            self.set_masks(state["masks"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._zero_pruned_state()  # a checkpoint of an older version may hold state for pruned weights
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if len(state["callbacks"]) != len(self.callbacks):
            raise ValueError(
                f"checkpoint holds the state of {len(state['callbacks'])} callback(s), the run has "
                f"{len(self.callbacks)}: the method's code changed since the checkpoint; delete it to restart"
            )
        for callback, callback_state in zip(self.callbacks, state["callbacks"], strict=True):
            callback.load_state_dict(callback_state)
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])


@dataclass(frozen=True)
class TrainResult:
    steps: int
    selected_step: int  # the step whose weights the model ends with (the last one under "last")
    val_loss: float | None = None
    masks: Masks | None = None  # the masks held at the end (None when training was dense)


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
        loss = sum(weights[t] * losses[t](outputs[t], batch[t]) for t in model.tasks if t in outputs)
        total += float(loss) * batch["input"].shape[0]
        count += batch["input"].shape[0]
    model.train(was_training)
    return total / count


@dataclass(frozen=True)
class Loading:
    """How batches reach the device (the runtime's choice; never part of a result's identity)."""

    num_workers: int = 0
    channels_last: bool = False
    pin_memory: bool = False


@dataclass(frozen=True)
class TrainingData:
    """What every training call of a stage shares: its data, how its protocol trains and selects the final
    step, and how batches reach the device."""

    dataset_name: str
    train_set: Any
    device: torch.device
    val_set: Any = None
    selection: str = "last"
    val_every: int = 50
    protocol: str = "standard"
    loading: Loading = field(default_factory=Loading)

    @classmethod
    def of(
        cls, stage: Any, train_set: Any, val_set: Any, device: torch.device, loading: Loading
    ) -> TrainingData:
        """For a dense stage or a cell: its dataset and its ``eval`` selection, val_every and protocol."""
        return cls(
            dataset_name=stage.data.dataset,
            train_set=train_set,
            device=device,
            val_set=val_set,
            selection=stage.eval.selection,
            val_every=stage.eval.val_every,
            protocol=stage.eval.protocol,
            loading=loading,
        )


def train(
    model: MTLModel,
    data: TrainingData,
    *,
    spec: TrainSpec,
    seed: int,
    masks: Masks | None = None,
    on_step: StepCallback | None = None,
    callbacks: Sequence[TrainCallback] = (),
    step_offset: int = 0,
    schedule: TrainSpec | None = None,
    checkpoint: CallCheckpoint | None = None,
    guard: DivergenceGuard | None = None,
    optimization: Optimization | None = None,
) -> TrainResult:
    """Run `spec.steps` optimizer steps; with ``selection="best_val"`` end on the weights of the step with
    the lowest validation loss (evaluated every `val_every` steps and after the last one).

    ``step_offset`` starts the LR schedule at that step, and ``schedule`` (default ``spec``) is the recipe
    whose LR schedule is followed: learning-rate rewinding trains ``spec.steps`` steps on the dense recipe's
    schedule replayed from an early step. The masks held at the end (callbacks may change them) are in
    ``TrainResult.masks``. With ``checkpoint`` the state is saved at the start, every ``checkpoint.every``
    steps and at the end, and a loaded checkpoint (``checkpoint.resume``) is continued from its step.
    ``guard`` raises :class:`Divergence` when a task loss stays far above its untrained level
    (mtlprune.engine.divergence), at any step and on the weights the last update leaves (one more forward
    pass on the last batch, without side effects: :meth:`StepRunner.end_losses`). ``optimization``: a
    method's own parameter groups (learning rates, weight decay, clipping) instead of the recipe's one
    optimizer over every trainable parameter.
    """
    dataset_name, train_set, val_set, device = data.dataset_name, data.train_set, data.val_set, data.device
    selection, loading = data.selection, data.loading
    if selection == "best_val" and val_set is None:
        raise ValueError("selection 'best_val' needs a validation split (data.val_fraction > 0)")
    class_weights = getattr(train_set, "class_weights", None)
    step_runner = StepRunner(
        model,
        dataset_name,
        spec,
        device,
        masks,
        class_weights=class_weights,
        protocol=data.protocol,
        callbacks=callbacks,
        step_offset=step_offset,
        schedule=schedule,
        channels_last=loading.channels_last,
        guard=guard,
        optimization=optimization,
    )
    torch.manual_seed(seed)  # dropout draws
    best: tuple[float, int, dict[str, Tensor], Masks | None] | None = None
    start = 0
    resume = None if checkpoint is None else checkpoint.resume
    if resume is not None:
        start, best = _restore(resume, model, step_runner, spec.steps)

    def save(step: int) -> None:
        assert checkpoint is not None
        checkpoint.save(
            step,
            {
                "model": model.state_dict(),
                "runner": step_runner.state_dict(),
                "best": None if best is None else list(best),
            },
        )

    stream = batch_stream(
        train_set,
        spec.batch_size,
        seed,
        start=start,
        steps=spec.steps - start,
        num_workers=loading.num_workers,
        pin_memory=loading.pin_memory,
    )
    resumed_at = start if resume is not None else None  # that state is the checkpoint itself
    last_batch: dict[str, Any] | None = None
    for step, batch in zip(range(start, spec.steps), stream, strict=False):
        if checkpoint is not None and step != resumed_at and checkpoint.due(step, spec.steps):
            save(step)
        last_batch = to_device(batch, device)
        scalars = step_runner(last_batch, step)
        if selection == "best_val" and ((step + 1) % data.val_every == 0 or step + 1 == spec.steps):
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
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = (loss, step, state, step_runner.masks)
        if on_step is not None:
            on_step(step, scalars)
    step_runner.check_masks_held()
    if guard is not None and last_batch is not None:
        # The weights the last update left, which no step measured (rule 2 at the end of the call). Skipped
        # when this process trained no step of the call: the check ran before the end checkpoint was saved.
        guard.check_end(spec.steps, step_runner.end_losses(last_batch))
    if checkpoint is not None and resumed_at != spec.steps:
        save(spec.steps)  # the phase boundary: a stage killed after this call does not train it again
    if best is None:
        return TrainResult(steps=spec.steps, selected_step=spec.steps - 1, masks=step_runner.masks)
    model.load_state_dict(best[2])
    # The masks of the selected step: a callback may have changed them after it.
    return TrainResult(steps=spec.steps, selected_step=best[1], val_loss=best[0], masks=best[3])


def _restore(
    payload: Mapping[str, Any], model: MTLModel, runner: StepRunner, steps: int
) -> tuple[int, tuple[float, int, dict[str, Tensor], Masks | None] | None]:
    """Put model, optimizer, masks, callbacks and RNGs back as they were at the checkpoint's step."""
    step = int(payload["step"])
    if not 0 <= step <= steps:
        raise ValueError(f"checkpoint is at step {step} of a call of {steps} steps: the recipe changed")
    state = payload["train"]
    model.load_state_dict(state["model"])
    runner.load_state_dict(state["runner"])
    set_rng_state(payload["rng"])
    best = None if state["best"] is None else tuple(state["best"])
    return step, best  # type: ignore[return-value]
