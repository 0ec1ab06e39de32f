"""Training callbacks: task-loss weighting, mask changes mid-training, per-step scalars, LR replay."""

from __future__ import annotations

import pytest
import torch

from mtlprune.engine.train import StepRunner, TrainCallback
from mtlprune.registry import ARCHS
from mtlprune.spec import TrainSpec

TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def _runner(callbacks=(), **kwargs) -> StepRunner:
    torch.manual_seed(0)
    model = ARCHS.get("deeplab_resnet34")(TASKS, width=0.125, head_width=0.03125)
    spec = TrainSpec(steps=10, batch_size=2, lr=0.01, lr_schedule="constant")
    return StepRunner(model, "nyuv2", spec, torch.device("cpu"), callbacks=callbacks, **kwargs)


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "input": torch.randn(2, 3, 16, 16, generator=gen),
        "segment_semantic": torch.randint(0, 40, (2, 16, 16), generator=gen),
        "normal": torch.randint(0, 255, (2, 3, 16, 16), generator=gen).to(torch.uint8),
        "depth_zbuffer": torch.rand(2, 1, 16, 16, generator=gen) + 0.5,
    }


class OnlyDepth(TrainCallback):
    def loss_weights(self, step, losses):
        return {"segment_semantic": 0.0, "normal": 0.0, "depth_zbuffer": 2.0}


def test_loss_weights_hook_sets_the_objective_and_is_logged():
    scalars = _runner([OnlyDepth()])(_batch(), 0)
    # total = 0·seg + 0·normal + 2·depth
    assert scalars["loss"] == pytest.approx(2.0 * scalars["loss.depth_zbuffer"], rel=1e-6)
    assert scalars["weight.depth_zbuffer"] == 2.0 and scalars["weight.normal"] == 0.0
    plain = _runner()(_batch(), 0)
    assert "weight.normal" not in plain
    total = plain["loss.segment_semantic"] + plain["loss.normal"] + plain["loss.depth_zbuffer"]
    assert plain["loss"] == pytest.approx(total, rel=1e-6)


class PruneFirstLayerAtStep1(TrainCallback):
    """Prunes the first half of the stem conv after step 1 and reports how much it pruned."""

    def after_step(self, step, runner):
        if step != 1:
            return None
        name = next(iter(runner.params))
        mask = torch.ones_like(runner.params[name], dtype=torch.bool)
        mask.view(-1)[: mask.numel() // 2] = False
        runner.set_masks({name: mask})
        return {"pruned": float(mask.numel() // 2)}


def test_after_step_may_change_masks_and_log_scalars():
    runner = _runner([PruneFirstLayerAtStep1()])
    name = next(iter(runner.params))
    records = [runner(_batch(), step) for step in range(4)]
    assert "pruned" not in records[0] and records[1]["pruned"] == runner.params[name].numel() // 2
    weight = runner.params[name].detach().view(-1)
    half = weight.numel() // 2
    assert torch.all(weight[:half] == 0) and torch.all(weight[half:] != 0)  # held zero through steps 2, 3
    assert runner.masks is not None and int((~runner.masks[name]).sum()) == half


class RecordGrad(TrainCallback):
    def __init__(self):
        self.grads = []

    def after_backward(self, step, runner):
        name = next(iter(runner.params))
        self.grads.append(runner.params[name].grad.detach().clone())


def test_after_backward_sees_the_unmasked_gradient():
    recorder = RecordGrad()
    runner = _runner([recorder])
    name = next(iter(runner.params))
    mask = torch.ones_like(runner.params[name], dtype=torch.bool)
    mask[:, 0] = False  # every weight reading the red input channel pruned (outputs stay alive)
    runner.set_masks({name: mask})
    runner(_batch(), 0)
    assert recorder.grads[0][~mask].abs().sum() > 0  # the dense gradient reaches pruned weights, unmasked
    assert torch.all(runner.params[name][~mask] == 0)  # yet they stay exactly zero after the step


def test_schedule_and_offset_replay_a_longer_recipe():
    dense = TrainSpec(steps=100, batch_size=2, lr=0.1, lr_schedule="cosine")
    runner = _runner(step_offset=25, schedule=dense)
    lr = runner(_batch(), 0)["lr"]
    # cosine at step 25 of 100: 0.1 · ½(1 + cos(π/4)) = 0.1 · 0.853553…
    assert lr == pytest.approx(0.1 * 0.5 * (1 + 2**-0.5), rel=1e-12)


def test_ctx_log_is_tagged_with_the_phase_of_the_training_call_it_is_made_from(tmp_path):
    from mtlprune.engine.build import build_model
    from mtlprune.engine.context import MethodContext, TrainingSession
    from mtlprune.engine.data import build_dataset
    from tests.helpers import tiny_matrix

    cell = tiny_matrix(train={"steps": 1, "batch_size": 4}, finetune={"steps": 2, "batch_size": 4}).expand()[
        0
    ]
    records: list[dict] = []
    train_set = build_dataset(cell.data, tmp_path, "train", seed=0, protocol=cell.eval.protocol)
    ctx = MethodContext(
        model=build_model(cell),
        spec=cell,
        train_set=train_set,
        device=torch.device("cpu"),
        session=TrainingSession(logger=records.append),
    )

    class LogEachStep(TrainCallback):
        def after_step(self, step, runner):
            ctx.log(seen=step)

    ctx.log(before=1)
    ctx.train(phase="regrow", callbacks=[LogEachStep()])
    ctx.log(after=1)
    ctx.finetune()
    tagged = [
        (r["phase"], next(k for k in r if k not in ("phase", "step")))
        for r in records
        if "seen" in r or "before" in r or "after" in r
    ]
    assert tagged == [("prune", "before"), ("regrow", "seen"), ("regrow", "seen"), ("prune", "after")]
    assert {r["phase"] for r in records if "step" in r} == {"regrow", "finetune"}
