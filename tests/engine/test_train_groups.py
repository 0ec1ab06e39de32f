"""The trainer's hooks for methods with an optimizer setup of their own (ECS): parameter groups with their
own LR, weight decay and clip, extra loss terms, and models that compute some of their tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlprune.engine.train import Optimization, ParamGroup, StepRunner, TrainCallback
from mtlprune.registry import ARCHS
from mtlprune.spec import TrainSpec
from tests.engine.test_train_callbacks import TASKS, _batch


def _model():
    torch.manual_seed(0)
    return ARCHS.get("deeplab_resnet34")(TASKS, width=0.125, head_width=0.03125)


SPEC = TrainSpec(steps=10, batch_size=2, lr=0.01, lr_schedule="step", lr_step=1, lr_gamma=0.5)


class Penalty(TrainCallback):
    def __init__(self, param: nn.Parameter) -> None:
        self.param = param

    def extra_loss(self, step, outputs):
        return {"l2": 3.0 * self.param.square().sum()}


def test_only_the_groups_train_with_their_own_lr_schedule_and_decay():
    model = _model()
    head = tuple(model.heads["normal"].parameters())
    stem = model.backbone.conv1.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    setup = Optimization(
        (ParamGroup("head", head), ParamGroup("stem", (stem,), lr=0.5, weight_decay=0.0)), algorithm="adamw"
    )
    runner = StepRunner(model, "nyuv2", SPEC, torch.device("cpu"), optimization=setup)
    assert isinstance(runner.optimizer, torch.optim.AdamW)
    runner(_batch(), 0)
    runner(_batch(), 1)
    lrs = [g["lr"] for g in runner.optimizer.param_groups]
    assert lrs == [pytest.approx(0.01 * 0.5), pytest.approx(0.5 * 0.5)]  # the schedule scales each group
    assert runner.optimizer.param_groups[0]["weight_decay"] == SPEC.weight_decay
    trained = {id(p) for p in (*head, stem)}
    for name, p in model.named_parameters():
        if id(p) not in trained:
            assert torch.equal(before[name], p.detach()), name  # outside every group: untouched
    assert not torch.equal(before["backbone.conv1.weight"], stem.detach())


def test_a_group_clip_bounds_its_gradient_norm_and_extra_losses_are_added_and_logged():
    model = _model()
    stem = next(model.backbone.parameters())
    seen = {}

    class Spy(TrainCallback):
        def after_backward(self, step, runner):
            seen["before"] = float(stem.grad.norm())

    setup = Optimization((ParamGroup("stem", (stem,), max_grad_norm=1e-3),))
    runner = StepRunner(
        model, "nyuv2", SPEC, torch.device("cpu"), optimization=setup, callbacks=[Spy(), Penalty(stem)]
    )
    scalars = runner(_batch(), 0)
    assert seen["before"] > 1e-3 and float(stem.grad.norm()) == pytest.approx(1e-3, rel=1e-4)
    task_total = sum(scalars[f"loss.{t}"] for t in TASKS)
    assert scalars["extra.l2"] > 0 and scalars["loss"] == pytest.approx(
        task_total + scalars["extra.l2"], rel=1e-5
    )


class OneTask(nn.Module):
    """A model that computes one of its tasks (as ECS trains one sub-task at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()
        self.tasks = self.inner.tasks
        self.heads = self.inner.heads

    def prunable_parameters(self):
        return self.inner.prunable_parameters()

    def forward(self, x):
        return {"normal": self.inner(x)["normal"]}


def test_losses_cover_the_tasks_the_model_computed():
    runner = StepRunner(OneTask(), "nyuv2", SPEC, torch.device("cpu"))
    scalars = runner(_batch(), 0)
    assert "loss.normal" in scalars and "loss.segment_semantic" not in scalars
    assert scalars["loss"] == pytest.approx(scalars["loss.normal"])


def test_the_default_setup_is_unchanged():
    a, b = _model(), _model()
    torch.manual_seed(1)  # the heads' dropout
    StepRunner(a, "nyuv2", SPEC, torch.device("cpu"))(_batch(), 0)
    everything = Optimization((ParamGroup("all", tuple(p for p in b.parameters() if p.requires_grad)),))
    torch.manual_seed(1)
    StepRunner(b, "nyuv2", SPEC, torch.device("cpu"), optimization=everything)(_batch(), 0)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
