"""Test-only method whose mask is drawn from the global RNGs (torch, NumPy, python ``random``).

A well-behaved method draws from ``ctx.generator``; this one shows that the runner's seeding makes even a
method that does not the same whatever ran before it (tests/engine/test_determinism.py).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mtlprune.engine.context import MethodContext
from mtlprune.methods.base import PruningMethod
from mtlprune.registry import METHODS


@METHODS.register("test-global-rng")
class GlobalRng(PruningMethod):
    """Random scores from torch.rand + np.random + random.random, then finetune."""

    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        shift = float(np.random.rand()) + random.random()
        scores = {n: torch.rand(p.shape) + shift for n, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores))
        ctx.finetune()
