"""Benchmarks (tox -e perf). Targets are ratios against a baseline measured in the same run."""

from __future__ import annotations

import pytest
import torch

from bench.models.resnet import deeplab_resnet34
from bench.sparsity import select_masks
from bench.spec import TrainSpec
from bench.tasks import task_loss
from bench.train import make_optimizer

TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def _step_fn(masked: bool):
    torch.manual_seed(0)
    model = deeplab_resnet34(TASK_CHANNELS, width=0.25, head_width=0.0625)
    params = model.prunable_parameters()
    masks = None
    if masked:
        masks = select_masks({n: p.detach().abs() for n, p in params.items()}, 0.9)
    optimizer = make_optimizer(list(model.parameters()), TrainSpec(steps=1))
    x = torch.randn(4, 3, 64, 64)
    targets = {
        "segment_semantic": torch.randint(0, 40, (4, 64, 64)),
        "normal": torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8),
        "depth_zbuffer": torch.rand(4, 1, 64, 64) + 0.5,
    }

    def step() -> None:
        out = model(x)
        loss = sum(task_loss("nyuv2", t, out[t], targets[t]) for t in TASK_CHANNELS)
        optimizer.zero_grad()
        loss.backward()
        if masks:
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
        optimizer.step()
        if masks:
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)

    return step


_times: dict[str, float] = {}


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_masked_step_overhead(benchmark, masked):
    """Holding a 90% mask (grad and weight multiply) costs < 25% over a dense step."""
    benchmark.group = "train-step"
    benchmark.pedantic(_step_fn(masked), rounds=8, warmup_rounds=2)
    _times["masked" if masked else "dense"] = benchmark.stats.stats.median
    if len(_times) == 2:
        assert _times["masked"] / _times["dense"] < 1.25
