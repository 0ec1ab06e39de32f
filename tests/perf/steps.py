"""What the step benchmarks share: NYU-v2's three tasks, one seeded batch, one seeded model."""

from __future__ import annotations

import statistics
import time

import torch

from mtlprune.registry import ARCHS

TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def nyu_batch(size: int) -> dict[str, torch.Tensor]:
    """Four seeded NYU-v2-shaped samples of ``size``×``size``."""
    gen = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(4, 3, size, size, generator=gen),
        "segment_semantic": torch.randint(0, 40, (4, size, size), generator=gen),
        "normal": torch.randint(0, 255, (4, 3, size, size), generator=gen, dtype=torch.uint8),
        "depth_zbuffer": torch.rand(4, 1, size, size, generator=gen) + 0.5,
    }


def seeded_model(arch: str, **widths: float):
    """``arch`` for the three tasks, initialised from seed 0 (``widths``: width, head_width)."""
    torch.manual_seed(0)
    return ARCHS.get(arch)(TASK_CHANNELS, **widths)


def copy_bandwidth(elements: int = 1 << 26, rounds: int = 5) -> float:
    """This machine's memory bandwidth as a step sees it now, in GB/s: bytes read and written by copying a
    float32 tensor of ``elements`` (256 MiB by default, far beyond any cache), median of ``rounds`` copies.

    The soft threshold's passes are bound by memory bandwidth and a dense step less so, so on a shared VM an
    AdapMTL / dense ratio moves with it; the full-width benchmarks print it beside their ratios.
    """
    source = torch.ones(elements)
    target = torch.empty_like(source)
    target.copy_(source)  # pages touched before timing
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return 2 * source.element_size() * elements / statistics.median(times) / 1e9
