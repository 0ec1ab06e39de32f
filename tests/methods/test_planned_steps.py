"""``PruningMethod.planned_steps``: the optimizer steps `mtlprune plan` says a cell will take.

Fast tests check the counts by hand (the fairness rule, IMP's and LTH's rounds); the slow one runs the
variants that change the count on a tiny matrix and checks that the planned steps are exactly what each cell
records as ``steps_method`` and ``steps_total`` (every method of the roster, with its contract params, is
checked the same way by tests/methods/test_method_contract.py).
"""

from __future__ import annotations

import pytest

from mtlprune.engine.requirements import planned_stages
from mtlprune.execution.matrix import run_matrix
from mtlprune.methods.base import PruningMethod
from mtlprune.plan.stages import plan
from mtlprune.registry import METHODS, load_plugins
from mtlprune.store import Store
from tests.helpers import tiny_matrix

load_plugins(["tests.plugins.taylor_example", "tests.plugins.rounds_example"])

PAPER_BUDGETS = {
    "train": {"steps": 20000, "batch_size": 4, "lr": 0.001},
    "finetune": {"steps": 20000, "batch_size": 4, "lr": 0.0001},
}


def _cell(name: str, params: dict | None = None, target: float = 0.9, **budgets):
    """The one cell of ``name`` at ``target``; the control row is planned beside a method, never listed."""
    listed = "magnitude" if METHODS.get(name).control else name
    methods = [{"name": listed, "params": params or {}}]
    matrix = tiny_matrix(methods=methods, sparsities=[target], **{**PAPER_BUDGETS, **budgets})
    (cell,) = matrix.expand()
    return cell.control() if listed != name else cell


def _planned(name: str, params: dict | None = None, target: float = 0.9, **budgets) -> int:
    cell = _cell(name, params, target, **budgets)
    return METHODS.get(name)(cell.method.parsed_params()).planned_steps(cell)


def test_imp_three_rounds_of_2000_steps():
    # rate 0.5 reaches 0.5, 0.75, then the target 0.875 exactly: 3 rounds × round_steps
    assert _planned("imp", {"rate": 0.5, "round_steps": 2000}, target=0.875) == 3 * 2000


def test_imp_rounds_spend_the_finetune_budget_each_or_the_rewound_dense_schedule():
    # rate 0.2 to 0.9: 1 − 0.8^r >= 0.9 first at r = 11 (0.914); each round finetunes 20k steps
    assert _planned("imp", {"rate": 0.2}) == 11 * 20000
    # the paper config's IMP: 11 rounds of 2000
    assert _planned("imp", {"rate": 0.2, "round_steps": 2000}) == 22000
    # lr_rewind: the dense schedule from k = 5% of 20k = 1000, T − k = 19000 steps per round; to 0.5: 4 rounds
    assert _planned("imp", {"rate": 0.2, "lr_rewind": True}, target=0.5) == 4 * 19000


def test_lth_retrains_t_minus_k_per_round():
    assert _planned("lth", {"rate": 0.9, "rewind": "init"}) == 20000  # one round, back to θ0: T − 0
    assert _planned("lth", {"rate": 0.2}) == 11 * (20000 - 1000)  # θk at 5% of T
    assert _planned("lth", {"rate": 0.5, "round_steps": 300}, target=0.7) == 2 * 300  # 0.5, then 0.7


def test_the_fairness_rule_is_the_default():
    assert _planned("magnitude") == 20000  # from the dense model: the finetune budget
    assert _planned("snip") == 40000  # from init: dense + finetune
    assert _planned("random", {"start": "init"}) == 40000  # the params choose where it starts
    assert _planned("adapmtl", {"start": "init"}) == 40000 and _planned("adapmtl") == 20000
    assert _planned("dense-finetune") == 20000
    assert _planned("snip", finetune={"steps": 500, "batch_size": 4}) == 20500  # budgets differ


def test_methods_that_do_not_override_follow_their_start():
    for name, cls in METHODS.items():
        if cls.planned_steps is not PruningMethod.planned_steps:
            continue  # imp and lth count their rounds (above)
        cell = _cell(name)
        method = cls(cell.method.parsed_params())
        expected = 20000 if method.starts_from == "dense" else 40000
        assert method.planned_steps(cell) == expected, name


def test_step_kinds():
    assert METHODS.get("magnitude").step_kind == "masked"
    assert METHODS.get("dense-finetune").step_kind == "dense"
    assert {METHODS.get(n).step_kind for n in ("adapmtl", "adapmtl-single-threshold", "str")} == {"adapmtl"}


# Variants whose step count differs from the plain roster's (rounds, rewinding, where they start).
VARIANTS = [
    {"name": "imp", "params": {"rate": 0.5}},
    {"name": "imp", "params": {"rate": 0.5, "lr_rewind": True}},
    {"name": "lth", "params": {"rate": 0.5}},
    {"name": "lth", "params": {"rate": 0.9, "rewind": "init"}},
    {"name": "random", "params": {"start": "init"}},
    {"name": "adapmtl", "params": {"start": "init"}},
]


@pytest.mark.slow
def test_planned_steps_of_the_variants_are_what_their_cells_record(tmp_path):
    """The roster with its contract params is checked in tests/methods/test_method_contract.py; here the
    variants whose count differs from the plain roster's, and the dense stage, run on a tiny matrix."""
    matrix = tiny_matrix(methods=VARIANTS, sparsities=[0.7], controls=True)
    store = Store(tmp_path / "store")
    outcome = run_matrix(matrix, store, show_progress=False)
    assert outcome.failed == {}, {k: store.status_record(k).error for k in outcome.failed}
    planned = planned_stages(plan(matrix))
    for p in planned:
        result = store.result(p.run_id)
        label = p.stage.label
        assert result.steps_total == p.steps_total, label
        if p.kind == "cell":
            assert result.steps_method == p.steps, label
            assert result.starts_from == p.starts_from, label
    # the counts are not all the fairness rule's: rounds and rewinding show (6 dense, 2 finetune steps)
    by_label = {p.stage.spec.method.label: p.steps for p in planned if p.kind == "cell"}
    assert by_label["imp(rate=0.5)"] == 2 * 2  # 0.5, 0.7: two rounds of the finetune budget
    assert by_label["imp(lr_rewind=True,rate=0.5)"] == 2 * (6 - 1)  # T − k, k = max(1, 5% of 6)
    assert by_label["lth(rate=0.5)"] == 2 * (6 - 1)
    assert by_label["lth(rate=0.9,rewind=init)"] == 6
    assert by_label["random(start=init)"] == 6 + 2
    assert by_label["adapmtl(start=init)"] == 6 + 2
    assert by_label["dense-finetune"] == 2
