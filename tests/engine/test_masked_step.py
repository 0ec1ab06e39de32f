"""Masked training with one multiply per step (issue #21): the gradient is masked, the weights are not.

The runner used to multiply the weights by the masks after every update as well. These tests keep that
older runner as the reference and check that dropping the second multiply changes nothing: the same
weights bit for bit, step after step, under every optimizer the trainer builds, through a mask change
mid-training and through a checkpoint that still holds optimizer state for pruned weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mtlprune.engine.sparsity import select_masks
from mtlprune.engine.train import Optimization, ParamGroup, StepRunner, TrainCallback
from mtlprune.registry import ARCHS
from mtlprune.spec import TrainSpec

TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
STEPS = 4


class _Seeded(StepRunner):
    """Dropout draws seeded by the step, so that two runners stepped in turn draw alike."""

    def __call__(self, batch, step):
        torch.manual_seed(step)
        return super().__call__(batch, step)


class _WeightsMaskedToo(_Seeded):
    """The previous runner: the weights multiplied by the masks after each update, as well, and the
    optimizer state of pruned weights left as it was."""

    def _zero_pruned_state(self):
        pass

    def __call__(self, batch, step):
        scalars = super().__call__(batch, step)
        with torch.no_grad():
            for param, mask in self.masked:
                param.mul_(mask)
        return scalars


def _batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(2, 3, 16, 16, generator=gen),
        "segment_semantic": torch.randint(0, 40, (2, 16, 16), generator=gen),
        "normal": torch.randint(0, 255, (2, 3, 16, 16), generator=gen).to(torch.uint8),
        "depth_zbuffer": torch.rand(2, 1, 16, 16, generator=gen) + 0.5,
    }


def _model():
    torch.manual_seed(0)
    return ARCHS.get("deeplab_resnet34")(TASKS, width=0.125, head_width=0.03125)


def _masks(model, sparsity: float = 0.8):
    return select_masks({n: p.detach().abs() for n, p in model.prunable_parameters().items()}, sparsity)


SPECS = {
    "adam": TrainSpec(steps=STEPS, optimizer="adam", lr=1e-3, weight_decay=1e-2, lr_schedule="constant"),
    "sgd-momentum": TrainSpec(
        steps=STEPS, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2, lr_schedule="constant"
    ),
    "sgd-plain": TrainSpec(steps=STEPS, optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0),
}


def _pair(spec: TrainSpec, adamw: bool = False, callbacks=((), ())):
    runners = []
    for cls, cbs in zip((_Seeded, _WeightsMaskedToo), callbacks, strict=True):
        model = _model()
        optimization = None
        if adamw:
            optimization = Optimization(
                (ParamGroup("all", tuple(model.parameters()), weight_decay=0.1),), algorithm="adamw"
            )
        runners.append(
            cls(
                model,
                "nyuv2",
                spec,
                torch.device("cpu"),
                _masks(model),
                callbacks=cbs,
                optimization=optimization,
            )
        )
    return runners


def _assert_identical(new: StepRunner, old: StepRunner) -> None:
    """Every weight and buffer equal (bit for bit but for the sign of a pruned zero: where the previous
    runner zeroed a weight that an update had moved, it became +0 or −0 by the direction of the move)."""
    for (name, p), q in zip(new.model.state_dict().items(), old.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
        if p.dtype == torch.float32:
            nonzero = p != 0
            assert torch.equal(p[nonzero].view(torch.int32), q[nonzero].view(torch.int32)), name


@pytest.mark.parametrize("optimizer", [*SPECS, "adamw"])
def test_gradient_masking_alone_trains_exactly_as_masking_the_weights_too(optimizer):
    spec = SPECS.get(optimizer, SPECS["adam"])
    new, old = _pair(spec, adamw=optimizer == "adamw")
    for step in range(STEPS):
        batch = _batch(step)
        assert new(batch, step) == old(batch, step)
        _assert_identical(new, old)
    zeros = 0
    for name, mask in new.masks.items():
        param = new.params[name]
        assert torch.count_nonzero(param.detach()[~mask]) == 0, name
        zeros += int((~mask).sum())
        for value in new.optimizer.state[param].values():  # the state of pruned weights stays zero
            if value.shape == param.shape:
                assert torch.count_nonzero(value[~mask]) == 0, name
    assert zeros > 0.75 * sum(m.numel() for m in new.masks.values())
    new.check_masks_held()


class _TightenAtStep(TrainCallback):
    """After step 1, prune half of what is left of the stem (GMP's pattern: a mask set after updates,
    when the optimizer already holds moments for the weights it prunes)."""

    def after_step(self, step, runner):
        if step == 1:
            masks = {n: m.clone() for n, m in runner.masks.items()}
            name = next(iter(masks))
            kept = masks[name].view(-1).nonzero().view(-1)
            masks[name].view(-1)[kept[: len(kept) // 2]] = False
            runner.set_masks(masks)


def test_a_mask_set_mid_training_zeroes_the_moments_of_the_weights_it_prunes():
    new, old = _pair(SPECS["adam"], callbacks=((_TightenAtStep(),), (_TightenAtStep(),)))
    for step in range(STEPS):
        new(_batch(step), step)
        old(_batch(step), step)
        _assert_identical(new, old)
    name = next(iter(new.masks))
    assert int((~new.masks[name]).sum()) > int((~_masks(_model())[name]).sum())  # the mask did tighten
    new.check_masks_held()


def test_a_checkpoint_holding_moments_of_pruned_weights_resumes_exactly():
    """A checkpoint written by the previous runner holds Adam moments for pruned weights (gradients were
    masked, but a weight pruned after dense steps keeps its old moments): loading it zeroes them."""
    new, old = _pair(SPECS["adam"])
    dense = StepRunner(_model(), "nyuv2", SPECS["adam"], torch.device("cpu"))
    dense(_batch(99), 0)  # moments for every weight
    masks = _masks(dense.model)
    state = {**dense.state_dict(), "masks": masks}
    for runner in (new, old):
        runner.model.load_state_dict(dense.model.state_dict())
        runner.load_state_dict(copy.deepcopy(state))  # as read from disk: tensors of its own
    name = next(iter(masks))
    moments = new.optimizer.state[new.params[name]]["exp_avg"]
    assert torch.count_nonzero(moments[~masks[name]]) == 0
    assert torch.count_nonzero(old.optimizer.state[old.params[name]]["exp_avg"][~masks[name]]) > 0
    for step in range(1, STEPS):
        new(_batch(step), step)
        old(_batch(step), step)
        _assert_identical(new, old)
    new.check_masks_held()


def test_a_pruned_weight_written_outside_the_step_is_an_error():
    new, _ = _pair(SPECS["adam"])
    new(_batch(0), 0)
    name, mask = next(iter(new.masks.items()))
    with torch.no_grad():
        new.params[name].view(-1)[(~mask).view(-1).nonzero()[0]] = 0.5
    with pytest.raises(RuntimeError, match=rf"1 pruned weight\(s\) of {name} are not zero"):
        new.check_masks_held()
