"""Has the dense stage converged? Two measures, torch-free (docs/design.md, "Divergence and convergence").

Over the last ``WINDOW`` (20%) of the training steps, the relative drop of the total training loss from the
first half of that window to the second: (mean first half − mean second half) / mean of the window, over
every step's loss (the dense stage keeps them, checkpointed, so a resumed stage measures the same). A model
still learning shows a clear drop; a converged one only noise. The stage counts as converged when the drop
is below ``TOLERANCE``. The second measure, the control row's ΔT against the dense model, is read from the
store by the analysis layer (mtlprune.analysis.dense_results.control_converged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

WINDOW = 0.2
TOLERANCE = 0.05
MIN_STEPS = 10  # steps the window needs; fewer: the measure is unknown (None), never a guess


def convergence_window(steps: int) -> int:
    """The first step of the convergence window of a ``steps``-step training."""
    return math.floor((1.0 - WINDOW) * steps)


def loss_convergence(losses: Iterable[tuple[int, float]], steps: int) -> dict[str, Any]:
    """``{"rel_drop", "converged", "window_steps", "steps_seen", "tolerance", "window_loss"}``.

    ``losses`` are (step, training loss) pairs of one training call of ``steps`` steps; those in the window
    count. ``rel_drop`` and ``converged`` are None when the window holds fewer than ``MIN_STEPS`` steps.
    """
    start = convergence_window(steps)
    window = [float(loss) for step, loss in sorted(losses) if step >= start]
    out: dict[str, Any] = {
        "rel_drop": None,
        "converged": None,
        "window_steps": steps - start,
        "steps_seen": len(window),
        "tolerance": TOLERANCE,
        "window_loss": sum(window) / len(window) if window else None,
    }
    if len(window) < MIN_STEPS:
        return out
    half = len(window) // 2
    first, second = window[:half], window[half:]
    mean = sum(window) / len(window)
    if not mean > 0:
        return out
    drop = (sum(first) / len(first) - sum(second) / len(second)) / mean
    out.update(rel_drop=drop, converged=drop < TOLERANCE)
    return out
