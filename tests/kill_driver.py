"""Run ``mtlprune`` in this process and SIGKILL it at a chosen point (for the resume tests).

``python -m tests.kill_driver step N ARGS...`` kills the process right after its N-th logged training step;
``python -m tests.kill_driver save N ARGS...`` right after its N-th checkpoint is written. ARGS go to bench.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _kill_after(n: int, cls: Any, method: str, counts: Any = lambda *args: True) -> None:
    original = getattr(cls, method)
    seen = [0]

    def wrapper(self: Any, *args: Any) -> Any:
        out = original(self, *args)
        if counts(*args):
            seen[0] += 1
            if seen[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(cls, method, wrapper)


def main() -> int:
    mode, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from mtlprune.cli import main as bench_main
    from mtlprune.engine import checkpoint, logs

    if mode == "step":
        _kill_after(n, logs.JsonlLogger, "__call__", lambda record: record.get("step") is not None)
    elif mode == "save":
        _kill_after(n, checkpoint.StageCheckpoint, "save")
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected 'step' or 'save'")
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
