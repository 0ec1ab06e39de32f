"""What the step benchmarks share: NYU-v2's three tasks, one seeded batch, one seeded model."""

from __future__ import annotations

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
