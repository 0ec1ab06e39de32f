"""Cost estimate of pending stages: hand-computed golden values on a fake store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mtlprune.plan.estimate import CostEstimate, estimate_costs, format_duration
from mtlprune.store import RESULT, Store, atomic_write_json
from tests.fake_store import dense_result
from tests.helpers import Priced

NYU_MN = ("nyuv2", "mobilenetv2", 0.25)


def _finish(store: Store, run_id: str, wall_s: float) -> None:
    store.write_result(run_id, dense_result(run_id, {}, wall_s=wall_s))


def _finish_raw(store: Store, run_id: str, wall_s: object) -> None:
    """A damaged result.json: a valid record except for ``wall_s``."""
    payload = {**dense_result(run_id, {}).payload(), "wall_s": wall_s}
    atomic_write_json(store.run_dir(run_id) / RESULT, payload)


def _dense(run_id: str, *key: object) -> Priced:
    return Priced(run_id, "dense", tuple(key))


def _cell(run_id: str, *key: object) -> Priced:
    return Priced(run_id, "cell", tuple(key))


@pytest.fixture
def golden(tmp_path: Path) -> tuple[Path, list[Priced]]:
    store = Store(tmp_path)
    stages = [
        _dense("d1", *NYU_MN, 100),  # done, 100 s
        _dense("d2", *NYU_MN, 100),  # done, 140 s (another seed)
        _dense("d3", *NYU_MN, 100),  # pending: exact key -> (100 + 140) / 2 = 120
        _dense("d4", *NYU_MN, 200),  # pending: fallback to dense of NYU_MN -> 120, noted
        _dense("d5", "taskonomy", "deeplab_resnet34", 1.0, 100),  # pending: nothing to estimate from
        _cell("c1", *NYU_MN, "magnitude", 50),  # done, 30 s
        _cell("c2", *NYU_MN, "magnitude", 50),  # done, 36.5 s
        _cell("c3", *NYU_MN, "snip", 50),  # done, 10 s
        _cell("c4", *NYU_MN, "magnitude", 50),  # pending: (30 + 36.5) / 2 = 33.25
        _cell("c5", *NYU_MN, "snip", 50),  # pending: 10
        _cell("c6", *NYU_MN, "lth", 50),  # pending: fallback to cells of NYU_MN: (30 + 36.5 + 10) / 3 = 25.5
        _cell("c7", *NYU_MN, "lth", 50),  # pending: same fallback, 25.5
        _cell("c8", "nyuv2", "mobilenetv2", 0.5, "magnitude", 50),  # failed earlier, no measurement
    ]
    for run_id, wall in {"d1": 100, "d2": 140.0, "c1": 30.0, "c2": 36.5, "c3": 10}.items():
        _finish(store, run_id, wall)
    store.write_status("c8", status="failed", error="boom")
    store.write_status("c4", status="running")
    return tmp_path, stages


def test_golden_estimate(golden: tuple[Path, list[Priced]]) -> None:
    root, stages = golden
    est = estimate_costs(root, stages)
    assert (est.done, est.pending, est.unmeasured, est.fallback) == (5, 8, 2, 3)
    assert est.per_stage == {
        "d3": 120.0,
        "d4": 120.0,
        "d5": None,
        "c4": 33.25,
        "c5": 10.0,
        "c6": 25.5,
        "c7": 25.5,
        "c8": None,
    }
    assert est.pending_s == 334.25
    assert (
        est.line == "estimate: 8 pending stage(s) ≈ 6 min from measured stage times (2 without a measurement)"
    )
    assert est.notes == [
        "1 pending dense stage(s) with key ('nyuv2', 'mobilenetv2', 0.25, 200): no finished stage with this "
        "key; estimated from the mean of 2 finished dense stage(s) of (dataset, arch, width) "
        "('nyuv2', 'mobilenetv2', 0.25)",
        "2 pending cell stage(s) with key ('nyuv2', 'mobilenetv2', 0.25, 'lth', 50): no finished stage with "
        "this key; estimated from the mean of 3 finished cell stage(s) of (dataset, arch, width) "
        "('nyuv2', 'mobilenetv2', 0.25)",
    ]


def test_duplicate_stage_counted_once(golden: tuple[Path, list[Priced]]) -> None:
    root, stages = golden
    est = estimate_costs(root, [*stages, stages[0], stages[2]])
    assert (est.done, est.pending, est.pending_s) == (5, 8, 334.25)


def test_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stage d1 listed with two keys"):
        estimate_costs(tmp_path, [_dense("d1", *NYU_MN, 100), _dense("d1", *NYU_MN, 200)])


def test_nothing_done_and_nothing_pending(tmp_path: Path) -> None:
    stages = [_dense("d1", *NYU_MN, 100), _cell("c1", *NYU_MN, "snip", 50)]
    est = estimate_costs(tmp_path, stages)
    assert (est.done, est.pending, est.unmeasured, est.fallback, est.pending_s) == (0, 2, 2, 0, 0.0)
    assert est.line == "estimate: 2 pending stage(s), no finished stage to estimate from yet (0 done)"

    store = Store(tmp_path)
    _finish(store, "d1", 5.0)
    _finish(store, "c1", 2.0)
    est = estimate_costs(tmp_path, stages)
    assert (est.done, est.pending, est.pending_s, est.per_stage) == (2, 0, 0.0, {})
    assert est.line == "estimate: nothing pending (2 stage(s) done)"
    assert estimate_costs(tmp_path, []).line == "estimate: nothing pending (0 stage(s) done)"


def test_all_measured_line_has_no_parenthesis(tmp_path: Path) -> None:
    _finish(Store(tmp_path), "d1", 4000.0)
    est = estimate_costs(tmp_path, [_dense("d1", *NYU_MN, 100), _dense("d2", *NYU_MN, 100)])
    assert est.line == "estimate: 1 pending stage(s) ≈ 1 h 7 min from measured stage times"


def test_kinds_do_not_mix(tmp_path: Path) -> None:
    """A dense measurement never estimates a cell of the same (dataset, arch, width), nor the reverse."""
    _finish(Store(tmp_path), "d1", 100.0)
    est = estimate_costs(tmp_path, [_dense("d1", *NYU_MN, 100), _cell("c1", *NYU_MN, "snip", 50)])
    assert (est.unmeasured, est.fallback, est.per_stage) == (1, 0, {"c1": None})


def test_wall_line_divides_stage_time_by_the_workers() -> None:
    est = CostEstimate(done=3, pending=37, pending_s=4320.0, unmeasured=5, fallback=0)
    assert est.wall_line(2) == "with 2 workers ≈ 36 min of wall time (stage time / workers)"
    assert est.wall_line(1) is None
    assert CostEstimate(done=0, pending=4, pending_s=0.0, unmeasured=4, fallback=0).wall_line(2) is None


def test_line_matches_the_documented_example() -> None:
    est = CostEstimate(done=3, pending=37, pending_s=4320.0, unmeasured=5, fallback=0)
    assert est.line == (
        "estimate: 37 pending stage(s) ≈ 1 h 12 min from measured stage times (5 without a measurement)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59.4, "59 s"),
        (59.6, "1 min"),
        (90, "2 min"),  # 1.5 min rounds half to even
        (150, "2 min"),
        (3599, "1 h 0 min"),
        (4320, "1 h 12 min"),
        (86_399, "1 d 0 h"),
        (90_000, "1 d 1 h"),
        (3 * 86_400 + 5 * 3600 + 1200, "3 d 5 h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_format_duration_rejects_bad_input(bad: float) -> None:
    with pytest.raises(ValueError, match="expected finite seconds >= 0"):
        format_duration(bad)


@pytest.mark.parametrize("wall", [None, "12", -3.0, True])
def test_a_damaged_result_is_pending_and_named(tmp_path: Path, wall: object) -> None:
    """A result that is not a valid record is no measurement: the stage is pending (run recomputes it)."""
    _finish_raw(Store(tmp_path), "d1", wall)
    est = estimate_costs(tmp_path, [_dense("d1", *NYU_MN, 100)])
    assert (est.done, est.pending) == (0, 1)
    path = tmp_path / "runs" / "d1" / RESULT
    (problem,) = Store(tmp_path).damage("d1")
    assert (problem.path, problem.action) == (path, "recompute")
    assert problem.what.startswith("not a valid result record (wall_s: ")
    assert f"(got {wall!r})" in problem.what


def test_a_corrupt_result_is_pending_and_named(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "d1" / RESULT
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    est = estimate_costs(tmp_path, [_dense("d1", *NYU_MN, 100)])
    assert (est.done, est.pending) == (0, 1)
    (problem,) = Store(tmp_path).damage("d1")
    assert problem.path == path and problem.what.startswith("corrupt JSON (Expecting property name")


def test_stages_of_unknown_identity_count_as_pending(golden: tuple[Path, list[Priced]]) -> None:
    """`mtlprune plan` before a disk dataset's fingerprint is known: those run ids cannot be looked up."""
    root, stages = golden
    est = estimate_costs(root, stages, unknown=["d1", "c3"])
    # d1 and c3 are done in the store, but unknown: pending, and their times are not measurements
    assert (est.done, est.pending) == (3, 10)
    assert est.per_stage["d1"] == est.per_stage["d3"] == 140.0  # d2 alone measures the dense key
    assert est.per_stage["c3"] == est.per_stage["c5"] == (30 + 36.5) / 2  # snip falls back to the cells
