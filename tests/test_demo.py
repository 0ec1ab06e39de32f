"""The default demo matrix, end to end on CPU: what the README promises (about 4 minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.analysis import load_results
from bench.runner import run_matrix
from bench.spec import load_matrix
from bench.store import Store

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.mark.slow
def test_demo_matrix_magnitude_beats_random_at_90_percent(tmp_path):
    matrix = load_matrix(DEMO)
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}
    frame = load_results(store.root, [c.run_id for c in matrix.expand()])
    assert len(frame) == 6 and set(frame["status"]) == {"done"}
    assert (frame["achieved_sparsity"] - frame["target_sparsity"]).abs().max() < 0.001
    at_90 = frame[frame["target_sparsity"] == 0.9].set_index("method")["delta_t"]
    assert at_90["magnitude"] > at_90["random"]
    # Running the same config again trains nothing.
    again = run_matrix(matrix, store, show_progress=False)
    assert again.done == [] and len(again.skipped) == 7
