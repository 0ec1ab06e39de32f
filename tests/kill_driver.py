"""Run ``mtlprune`` in this process and signal it at a chosen point (for the resume and interrupt tests).

``python -m tests.kill_driver POINT N ARGS...`` sends the signal right after the N-th occurrence of POINT:
``step`` (a logged training step), ``save`` (a checkpoint written) or ``open`` (a stage opened its log,
before its first checkpoint). The signal is SIGKILL unless POINT names another, as in ``save:INT`` or
``open:TERM`` (an interrupt the run unwinds from). ARGS go to bench.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _signal_after(n: int, cls: Any, method: str, signum: int, counts: Any = lambda *args: True) -> None:
    original = getattr(cls, method)
    seen = [0]

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if counts(*args):
            seen[0] += 1
            if seen[0] == n:
                os.kill(os.getpid(), signum)
        return out

    setattr(cls, method, wrapper)


def main() -> int:
    point, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    point, _, name = point.partition(":")
    signum = getattr(signal, f"SIG{name or 'KILL'}")
    from mtlprune.cli import main as bench_main
    from mtlprune.engine import checkpoint, logs

    if point == "step":
        _signal_after(n, logs.JsonlLogger, "__call__", signum, lambda record: record.get("step") is not None)
    elif point == "save":
        _signal_after(n, checkpoint.StageCheckpoint, "save", signum)
    elif point == "open":
        _signal_after(n, logs.JsonlLogger, "__init__", signum)
    else:
        raise SystemExit(f"unknown point {point!r}; expected 'step', 'save' or 'open' (':SIGNAL' optional)")
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
