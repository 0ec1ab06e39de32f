"""Test-only methods: one fails on its first attempt and works after (retry across processes); one kills
its own process (a crashed pool worker).

The first run of a cell creates ``marker`` and raises; any later run (``--retry-failed``) finds the marker
and prunes by magnitude, then finetunes. The marker path is a parameter, so each test gets its own cells.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pydantic import Field

from mtlprune.engine.context import MethodContext
from mtlprune.methods.base import MethodParams, NoParams, PruningMethod
from mtlprune.registry import METHODS


class FlakyOnceParams(MethodParams):
    marker: str = Field(description="file created by the failing first attempt")


class FlakyOnceError(RuntimeError):
    """The planned failure of the first attempt."""


@METHODS.register("test-flaky-once")
class FlakyOnce(PruningMethod):
    """Fails the first time (creating its marker file), then prunes by magnitude and finetunes."""

    Params = FlakyOnceParams
    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        marker = Path(self.params.marker)
        if not marker.exists():
            marker.touch()
            raise FlakyOnceError(f"first attempt fails on purpose (created {marker})")
        scores = {name: p.detach().abs() for name, p in ctx.prunable().items()}
        ctx.apply_masks(ctx.select_masks(scores))
        ctx.finetune()


@METHODS.register("test-crash-worker")
class CrashWorker(PruningMethod):
    """Kills its own process, as a segfault or the out-of-memory killer would (pool crash handling)."""

    Params = NoParams
    starts_from = "dense"

    def run(self, ctx: MethodContext) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
