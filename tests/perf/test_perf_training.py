"""Benchmarks (tox -e perf). Targets are ratios against a baseline measured in the same run.

One training step (the trainer's own `StepRunner`) of each architecture at CPU width, dense and holding a
90% global magnitude mask: the mask must cost under 5% of the dense step.
"""

from __future__ import annotations

import pytest
import torch

from bench.registry import ARCHS
from bench.sparsity import select_masks
from bench.spec import TrainSpec
from bench.train import StepRunner

TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
ARCH_NAMES = ["deeplab_resnet34", "mobilenetv2"]
_times: dict[tuple[str, bool], float] = {}


def _batch(size: int = 64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(4, 3, size, size, generator=gen),
        "segment_semantic": torch.randint(0, 40, (4, size, size), generator=gen),
        "normal": torch.randint(0, 255, (4, 3, size, size), generator=gen, dtype=torch.uint8),
        "depth_zbuffer": torch.rand(4, 1, size, size, generator=gen) + 0.5,
    }


def _runner(arch: str, masked: bool) -> StepRunner:
    torch.manual_seed(0)
    model = ARCHS.get(arch)(TASK_CHANNELS, width=0.25, head_width=0.0625)
    masks = None
    if masked:
        masks = select_masks({n: p.detach().abs() for n, p in model.prunable_parameters().items()}, 0.9)
    return StepRunner(model, "nyuv2", TrainSpec(steps=1), torch.device("cpu"), masks)


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_train_step_mask_overhead(benchmark, arch, masked):
    """masked / dense step time (min over rounds, the least noisy statistic) stays under 1.05."""
    benchmark.group = f"train-step {arch}"
    runner, batch = _runner(arch, masked), _batch()
    benchmark.pedantic(lambda: runner(batch, 0), rounds=12, warmup_rounds=3)
    _times[(arch, masked)] = benchmark.stats.stats.min
    if (arch, False) in _times and (arch, True) in _times:
        ratio = _times[(arch, True)] / _times[(arch, False)]
        benchmark.extra_info["masked_over_dense"] = ratio
        print(f"\n{arch}: masked/dense step time = {ratio:.3f}")
        assert ratio < 1.05
