"""The default demo matrix (README quickstart): what it plans, and its headline claim run end to end.

The whole demo (16 methods × 3 targets, about 5 minutes on 2 cores) is the README's first command and is
timed for each release (docs/design.md, "Tests and the inner loop"); the suite does not run it again: every
method is run end to end by the contract suite (tests/methods/test_method_contract.py) and its step count
against `mtlprune plan` there too. Here the demo config is checked as planned (the roster, the control row,
the fairness budgets), and its dense stage with the magnitude, random and control cells runs for the claim
the demo exists to show: magnitude pruning beats random at 90% sparsity.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlprune.analysis import load_results
from mtlprune.engine.requirements import planned_stages
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import plan
from mtlprune.spec import load_matrix
from mtlprune.spec.select import Selection
from mtlprune.store import Store

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ROSTER = {"random", "magnitude", "imp", "lth", "gmp", "snip", "grasp", "synflow", "rigl"}
ROSTER |= {"disparse-static", "disparse-pretrained", "disparse-dynamic"}
ROSTER |= {"adapmtl", "adapmtl-single-threshold", "adapmtl-fixed-weights", "str"}
# Methods that train on the fairness rule's budget (the others count rounds: IMP, LTH).
FIXED = ROSTER - {"imp", "lth"}


def test_demo_plans_the_whole_roster_on_the_fairness_budgets():
    matrix = load_matrix(DEMO)
    stages = plan(matrix)
    cells = [s for s in stages if s.kind == "cell"]
    names = [c.spec.method.name for c in cells]
    assert set(names) == ROSTER | {"dense-finetune"} and len(cells) == 3 * len(ROSTER) + 1
    assert [s.kind for s in stages].count("dense") == 1
    (control,) = [c for c in cells if c.spec.method.name == "dense-finetune"]
    assert control.spec.target_sparsity == 0.0
    budget = matrix.train.steps + matrix.finetune.steps  # 160 + 40
    totals = {
        (p.stage.spec.method.name, p.stage.spec.target_sparsity): p.steps_total
        for p in planned_stages(stages)
        if p.kind == "cell"
    }
    assert {totals[m, t] for m in FIXED for t in (0.5, 0.7, 0.9)} == {budget}


@pytest.mark.slow
def test_demo_magnitude_beats_random_at_90_percent(tmp_path):
    matrix = load_matrix(DEMO)
    only = Selection.parse(["method=magnitude,method=random,method=dense-finetune"])
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False, only=only)
    assert outcome.failed == {}
    ran = [s for s in plan(matrix, only) if s.kind == "cell"]
    assert len(ran) == 7  # 2 methods × 3 targets and the control row
    frame = load_results(store.root, [c.run_id for c in ran])
    assert set(frame["status"]) == {"done"}
    control = frame[frame["method_name"] == "dense-finetune"]
    assert control["delta_t_control"].tolist() == [0.0]
    pruned = frame[frame["method_name"] != "dense-finetune"]
    assert (pruned["achieved_sparsity"] - pruned["target_sparsity"]).abs().max() < 0.001
    assert set(pruned["steps_total"]) == {matrix.train.steps + matrix.finetune.steps}
    at_90 = pruned[pruned["target_sparsity"] == 0.9].set_index("method_name")["delta_t"]
    assert at_90["magnitude"] > at_90["random"]
    # Running the same selection again trains nothing.
    again = run_matrix(matrix, store, show_progress=False, only=only)
    assert again.done == [] and len(again.skipped) == 1 + len(ran)
