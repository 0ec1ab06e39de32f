"""The default demo matrix, end to end on CPU: what the README promises (under 10 minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlprune.analysis import load_results, summary_table
from mtlprune.execution.matrix import run_matrix
from mtlprune.spec import load_matrix
from mtlprune.store import Store

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.mark.slow
def test_demo_matrix_magnitude_beats_random_at_90_percent(tmp_path):
    matrix = load_matrix(DEMO)
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}
    everything = load_results(store.root, [c.run_id for c in matrix.expand()])
    roster = {"random", "magnitude", "imp", "lth", "gmp", "snip", "grasp", "synflow", "rigl"}
    roster |= {"disparse-static", "disparse-pretrained", "disparse-dynamic"}
    roster |= {"adapmtl", "adapmtl-single-threshold", "adapmtl-fixed-weights", "str"}
    assert set(everything["status"]) == {"done"}
    control = everything[everything["method_name"] == "dense-finetune"]
    assert len(control) == 1 and control["target_sparsity"].iloc[0] == 0.0  # the control row
    assert control["delta_t_control"].iloc[0] == 0.0
    frame = everything[everything["method_name"] != "dense-finetune"]
    assert set(frame["method_name"]) == roster and len(frame) == 3 * len(roster)
    gap = (frame["achieved_sparsity"] - frame["target_sparsity"]).abs()
    learned = frame["method_name"].isin(
        ["adapmtl", "adapmtl-single-threshold", "adapmtl-fixed-weights", "str"]
    )
    assert gap[~learned].max() < 0.001 and gap[learned].max() < 0.01  # learned thresholds: within 1 pp
    # Every method at every target is in the summary the run prints.
    summary = summary_table(frame)
    assert len(summary) == 3 * len(roster) and set(summary["method"].str.split("(").str[0]) == roster
    at_90 = frame[frame["target_sparsity"] == 0.9].set_index("method_name")["delta_t"]
    assert at_90["magnitude"] > at_90["random"]
    # Budgets: at-init methods train dense + finetune steps; one-shot methods add finetune to the dense stage.
    steps = frame.set_index(["method_name", "target_sparsity"])["steps_total"]
    budget = matrix.train.steps + matrix.finetune.steps
    fixed = ("snip", "grasp", "synflow", "gmp", "rigl", "magnitude", "random", "disparse-static",
             "disparse-pretrained", "disparse-dynamic", "adapmtl", "adapmtl-single-threshold",
             "adapmtl-fixed-weights", "str")  # fmt: skip
    assert {steps[m, t] for m in fixed for t in (0.5, 0.7, 0.9)} == {budget}
    # Running the same config again trains nothing.
    again = run_matrix(matrix, store, show_progress=False)
    assert again.done == [] and len(again.skipped) == 1 + 3 * len(roster) + 1
