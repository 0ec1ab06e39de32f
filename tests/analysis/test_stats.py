"""mtlprune.analysis.stats on hand-built frames: golden Holm, Friedman, Nemenyi CD, ranks, τ, intervals.

Frames are `load_results`-shaped (one row per cell and seed) and built here so that every expected number
can be worked by hand; the report's use of them is tested in tests/analysis/test_report.py.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mtlprune.analysis import (
    CONTROL_METHOD,
    average_ranks,
    block_values,
    friedman_test,
    holm,
    max_seeds_per_cell,
    nemenyi_cd,
    nemenyi_q,
    paired_differences,
    pairwise_tests,
    rank_stability,
    seed_intervals,
)
from mtlprune.analysis.stats_figures import cd_diagram, interval_plot
from mtlprune.analysis.stats_tables import (
    intervals_latex,
    intervals_markdown,
    pairwise_latex,
    pairwise_markdown,
    ranks_latex,
    ranks_markdown,
)

SETTING = {
    "dataset": "nyuv2",
    "tasks": "segment_semantic,normal",
    "arch": "mobilenetv2",
    "width": 0.125,
    "head_width": 0.03125,
    "protocol": "standard",
}


def _row(method: str, target: float, seed: int, value: float, status: str = "done", **extra) -> dict:
    return {
        **SETTING,
        "method": method,
        "method_name": method.split("(", 1)[0],
        "target_sparsity": target,
        "seed": seed,
        "status": status,
        "delta_t": value if status == "done" else math.nan,
        **extra,
    }


def _frame(values: dict[tuple[str, float, int], float], **failed: tuple[float, int]) -> pd.DataFrame:
    """Rows of (method, target, seed) → ΔT; ``failed`` names method → (target, seed) of a failed cell."""
    rows = [_row(m, t, s, v) for (m, t, s), v in values.items()]
    rows += [_row(m, t, s, math.nan, status="failed") for m, (t, s) in failed.items()]
    return pd.DataFrame(rows)


# Four blocks (seeds 0..3 at one target), three methods; ranks by hand (1 = highest ΔT):
# seed 0: A 1, B 2, C 3 · seed 1: A 1, B 3, C 2 · seed 2: A 1, B 2, C 3 · seed 3: A 2, B 1, C 3
RANKED = {
    0: {"A": 3.0, "B": 2.0, "C": 1.0},
    1: {"A": 3.0, "B": 1.0, "C": 2.0},
    2: {"A": 9.0, "B": 5.0, "C": -4.0},
    3: {"A": 0.5, "B": 0.7, "C": -1.0},
}


@pytest.fixture
def ranked() -> pd.DataFrame:
    return _frame({(m, 0.9, s): v for s, by in RANKED.items() for m, v in by.items()})


# ---------------------------------------------------------------------------------------------- Holm


def test_holm_adjusts_a_known_vector_in_input_order():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.04])  # NaN is kept and not counted: m = 2
    assert (
        adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    )
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, then kept monotone
    assert holm([]).size == 0


# -------------------------------------------------------------------------------- ranks and Friedman


def test_average_ranks_and_friedman_on_a_hand_worked_table(ranked):
    ranks = average_ranks(ranked)
    assert list(ranks["method"]) == ["A", "B", "C"]
    assert list(ranks["mean_rank"]) == pytest.approx([1.25, 2.0, 2.75])
    assert list(ranks["wins"]) == [3, 1, 0] and set(ranks["n_blocks"]) == {4}
    result = friedman_test(ranked)
    # χ² = 12N / (k(k+1)) · (Σ R_j² − k(k+1)²/4) = 4 · (1.5625 + 4 + 7.5625 − 12) = 4.5
    assert result.statistic == pytest.approx(4.5)
    assert result.p_value == pytest.approx(math.exp(-2.25))  # χ² with 2 df: sf(x) = exp(−x/2)
    assert result.iman_davenport == pytest.approx(3 * 4.5 / (4 * 2 - 4.5))
    assert result.iman_davenport_p == pytest.approx(sps.f.sf(13.5 / 3.5, 2, 6))
    table = np.array([[RANKED[s][m] for m in "ABC"] for s in range(4)])
    scipy_result = sps.friedmanchisquare(*table.T)
    assert result.statistic == pytest.approx(scipy_result.statistic)
    assert (result.k, result.n_blocks, result.n_dropped) == (3, 4, 0)
    assert result.cd == pytest.approx(nemenyi_q(3) * math.sqrt(3 * 4 / (6 * 4)))


def test_ties_share_the_average_rank_and_friedman_matches_scipy_with_ties():
    values = {("A", 0.5, 0): 5.0, ("B", 0.5, 0): 5.0, ("C", 0.5, 0): 1.0, ("D", 0.5, 0): 0.0}
    values |= {("A", 0.5, 1): 2.0, ("B", 0.5, 1): 3.0, ("C", 0.5, 1): 3.0, ("D", 0.5, 1): 3.0}
    values |= {("A", 0.5, 2): 4.0, ("B", 0.5, 2): 1.0, ("C", 0.5, 2): 2.0, ("D", 0.5, 2): 3.0}
    frame = _frame(values)
    ranks = average_ranks(frame).set_index("method")["mean_rank"]
    # seed 0: A, B tie for 1–2 → 1.5 each, C 3, D 4 · seed 1: B, C, D tie for 1–3 → 2 each, A 4
    # seed 2: A 1, D 2, C 3, B 4
    assert ranks.to_dict() == pytest.approx(
        {"A": (1.5 + 4 + 1) / 3, "B": (1.5 + 2 + 4) / 3, "C": (3 + 2 + 3) / 3, "D": (4 + 2 + 2) / 3}
    )
    table = np.array([[values[(m, 0.5, s)] for m in "ABCD"] for s in range(3)])
    assert friedman_test(frame).statistic == pytest.approx(sps.friedmanchisquare(*table.T).statistic)


def test_lower_is_better_metrics_rank_the_smallest_first():
    rows = [
        {**_row(m, 0.5, s, 0.0), "depth_zbuffer.abs_err": v}
        for (m, s), v in {("A", 0): 0.5, ("B", 0): 0.6, ("A", 1): 0.4, ("B", 1): 0.7}.items()
    ]
    ranks = average_ranks(pd.DataFrame(rows), "depth_zbuffer.abs_err")
    assert list(ranks["method"]) == ["A", "B"] and list(ranks["mean_rank"]) == [1.0, 2.0]
    # k = 2 (scipy's friedmanchisquare refuses it): 12·2/(2·3) · (1² + 2² − 2·3²/4) = 2
    result = friedman_test(pd.DataFrame(rows), "depth_zbuffer.abs_err")
    assert result.statistic == pytest.approx(2.0) and result.cd == pytest.approx(
        1.96 * math.sqrt(6 / 12), abs=1e-3
    )


def test_nemenyi_q_matches_demsar_table_5_and_the_cd_formula():
    for k, q in zip(range(2, 7), (1.960, 2.343, 2.569, 2.728, 2.850), strict=True):
        assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)
    assert nemenyi_q(4, alpha=0.10) == pytest.approx(2.291, abs=1e-3)  # Demšar's Table 5, α = 0.10
    assert nemenyi_cd(4, 10) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), rel=2e-4)


def test_incomplete_blocks_are_dropped_and_counted_with_the_reason():
    values = {key: float(i % 5) for i, key in enumerate(product("ABC", (0.5, 0.9), (0, 1)))}
    del values[("B", 0.5, 1)]
    values[("C", 0.9, 0)] = math.nan  # finished, but ΔT undefined (a diverged seed)
    frame = _frame(values, B=(0.5, 1))
    kept, dropped = block_values(frame)
    assert len(kept) == 2 and dropped.attrs["n_blocks"] == 2
    keys = zip(dropped["target_sparsity"], dropped["seed"], strict=True)
    reasons = dict(zip(keys, dropped["reason"], strict=True))
    assert reasons == {(0.5, 1): "no finished cell of B", (0.9, 0): "no finite value of C"}
    result = friedman_test(frame)
    assert (result.n_blocks, result.n_dropped) == (2, 2)
    # Blocking by target: each (setting, target) keeps its one complete seed; nothing is lost whole.
    by_target, dropped_t = block_values(frame, block_by="target")
    assert len(by_target) == 2 and dropped_t.attrs["n_blocks"] == 0 and len(dropped_t) == 2
    assert (
        by_target.loc[by_target.index.get_level_values("target_sparsity") == 0.5, "A"].iloc[0]
        == (values[("A", 0.5, 0)])
    )


def test_no_complete_block_is_a_value_error_naming_the_dropped_count():
    frame = _frame({("A", 0.5, 0): 1.0, ("B", 0.5, 1): 2.0})
    with pytest.raises(ValueError, match=r"no complete block .* 2 block\(s\) dropped"):
        friedman_test(frame)


def test_the_control_is_left_out_of_ranks_and_tests_but_kept_in_the_intervals(ranked):
    control = [_row(CONTROL_METHOD, 0.0, s, 0.1 * s) for s in range(4)]
    frame = pd.concat([ranked, pd.DataFrame(control)], ignore_index=True)
    assert list(average_ranks(frame)["method"]) == ["A", "B", "C"]
    assert friedman_test(frame).statistic == pytest.approx(4.5)  # unchanged: no block of its own
    tests = pairwise_tests(frame)
    assert CONTROL_METHOD not in set(tests["method_a"]) | set(tests["method_b"])
    intervals = seed_intervals(frame)
    (row,) = intervals[intervals["control"]].itertuples(index=False)
    assert (row.method, row.target_sparsity, row.n_seeds) == (CONTROL_METHOD, 0.0, 4)
    with pytest.raises(ValueError, match="control is not ranked"):
        average_ranks(frame, methods=["A", CONTROL_METHOD])
    # As a baseline, the control of the same seed pairs with every target.
    diffs = paired_differences(frame, baseline=CONTROL_METHOD)
    a = diffs[diffs["method_a"] == "A"].iloc[0]
    assert a["n_pairs"] == 4 and a["diff_mean"] == pytest.approx(
        np.mean([RANKED[s]["A"] - 0.1 * s for s in range(4)])
    )


# ---------------------------------------------------------------------------------------- intervals


def test_seed_intervals_are_reproducible_and_degenerate_for_equal_values():
    values = {("A", 0.5, s): v for s, v in enumerate([1.0, 3.0, 2.0, 6.0])}
    values |= {("B", 0.5, s): 4.0 for s in range(4)}
    frame = _frame(values)
    first, again = seed_intervals(frame), seed_intervals(frame.sample(frac=1.0, random_state=1))
    pd.testing.assert_frame_equal(first, again)
    a, b = (first[first["method"] == m].iloc[0] for m in "AB")
    assert a["mean"] == pytest.approx(3.0) and a["ci_low"] < 3.0 < a["ci_high"]
    assert a["ci_low"] >= 1.0 and a["ci_high"] <= 6.0  # a percentile bootstrap stays within the seeds
    assert (b["mean"], b["ci_low"], b["ci_high"]) == (4.0, 4.0, 4.0)


def test_methods_with_the_same_seeds_resample_the_same_seeds():
    a = [1.0, 3.0, 2.0, 6.0, -1.0]
    frame = _frame(
        {**{("A", 0.5, s): v for s, v in enumerate(a)}, **{("B", 0.5, s): v + 2.5 for s, v in enumerate(a)}}
    )
    intervals = seed_intervals(frame).set_index("method")
    assert intervals.loc["B", "ci_low"] == pytest.approx(intervals.loc["A", "ci_low"] + 2.5)
    assert intervals.loc["B", "ci_high"] == pytest.approx(intervals.loc["A", "ci_high"] + 2.5)


def test_a_paired_difference_of_a_constant_is_a_zero_width_interval():
    a = [1.0, 7.0, -3.0, 4.0]
    frame = _frame(
        {**{("A", 0.9, s): v for s, v in enumerate(a)}, **{("B", 0.9, s): v - 2.0 for s, v in enumerate(a)}}
    )
    (row,) = paired_differences(frame).itertuples(index=False)
    assert (row.method_a, row.method_b, row.n_pairs) == ("A", "B", 4)
    assert (row.diff_mean, row.ci_low, row.ci_high) == pytest.approx((2.0, 2.0, 2.0))
    assert row.excludes_zero
    cells = seed_intervals(frame).set_index("method")
    assert cells.loc["A", "ci_high"] - cells.loc["A", "ci_low"] > 4.0  # unpaired, the seeds' spread shows


def test_paired_differences_pair_only_the_seeds_both_finished():
    frame = _frame({("A", 0.5, 0): 1.0, ("A", 0.5, 1): 2.0, ("B", 0.5, 0): 0.0}, B=(0.5, 1))
    (row,) = paired_differences(frame, baseline="B").itertuples(index=False)
    assert (row.method_a, row.method_b, row.n_pairs, row.diff_mean) == ("A", "B", 1, 1.0)
    assert (row.ci_low, row.ci_high) == (1.0, 1.0)


# ------------------------------------------------------------------------------------- pairwise tests


def test_pairwise_wilcoxon_with_holm_and_the_notes_for_few_pairs_and_zeros():
    a = [3.0, 5.0, 4.0, 6.0, 8.0, 7.0, 9.0]
    values = {("A", 0.5, s): v for s, v in enumerate(a)}
    values |= {("B", 0.5, s): v - d for s, (v, d) in enumerate(zip(a, [1, 2, 3, 4, 5, 6, 7], strict=True))}
    values |= {("C", 0.5, s): v for s, v in enumerate(a)}  # C equals A: every difference is zero
    tests = pairwise_tests(_frame(values)).set_index(["method_a", "method_b"])
    ab = tests.loc[("A", "B")]
    assert (ab["n_pairs"], ab["wins_a"], ab["wins_b"], ab["mean_diff"]) == (7, 7, 0, 4.0)
    assert (
        ab["p_value"] == pytest.approx(sps.wilcoxon([1, 2, 3, 4, 5, 6, 7]).pvalue) == pytest.approx(2 / 2**7)
    )
    ac = tests.loc[("A", "C")]
    assert (ac["n_zero"], ac["p_value"]) == (7, 1.0)  # zsplit: all-zero differences give p = 1
    assert list(tests["p_holm"]) == pytest.approx(holm(tests["p_value"]))
    assert bool(ab["reject"]) and not bool(ac["reject"])
    few = pairwise_tests(_frame({(m, 0.5, s): float(s + (m == "A")) for m in "AB" for s in range(3)}))
    assert few["note"].iloc[0].startswith("3 pair(s): Wilcoxon cannot reach p < 0.05")
    none = pairwise_tests(_frame({("A", 0.5, 0): 1.0, ("B", 0.5, 1): 1.0}))
    assert math.isnan(none["p_value"].iloc[0]) and none["note"].iloc[0] == "no block where both finished"
    ttest = pairwise_tests(_frame(values), test="ttest").set_index(["method_a", "method_b"])
    b = [v - d for v, d in zip(a, range(1, 8), strict=True)]
    assert ttest.loc[("A", "B"), "p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert ttest.loc[("A", "C"), "note"].startswith("t-test undefined")


# ----------------------------------------------------------------------------------- rank stability


def test_kendall_tau_between_seed_rankings():
    orders = {0: "ABCD", 1: "ACBD", 2: "DCBA"}  # best first
    values = {(m, 0.5, s): float(4 - order.index(m)) for s, order in orders.items() for m in "ABCD"}
    stability = rank_stability(_frame(values))
    taus = {(r.seed_a, r.seed_b): r.tau for r in stability.pairs.itertuples(index=False)}
    # 0 vs 1: one discordant pair of six → (5 − 1) / 6; 0 vs 2: reversed → −1; 1 vs 2: five discordant
    assert taus == pytest.approx({(0, 1): 2 / 3, (0, 2): -1.0, (1, 2): -2 / 3})
    assert stability.mean_tau == pytest.approx(-1 / 3) and stability.min_tau == pytest.approx(-1.0)
    assert stability.n_seeds == 3
    one = rank_stability(_frame({k: v for k, v in values.items() if k[2] == 0}))
    assert one.pairs.empty and math.isnan(one.mean_tau)


def test_one_seed_still_gives_the_numbers_that_are_defined():
    frame = _frame({(m, t, 0): float(len(m) + t) for m, t in product(("A", "BB"), (0.5, 0.9))})
    assert max_seeds_per_cell(frame) == 1
    intervals = seed_intervals(frame)
    assert (intervals["ci_low"] == intervals["mean"]).all()
    assert list(average_ranks(frame)["mean_rank"]) == [1.0, 2.0]
    assert friedman_test(frame).n_blocks == 2


# ------------------------------------------------------------------------------ figures and tables


def test_cd_diagram_shows_the_cd_and_joins_methods_closer_than_it(ranked):
    result = friedman_test(ranked)
    assert result.cliques() == [("A", "B", "C")]  # CD = 1.66 > 2.75 − 1.25
    texts = [t.get_text() for t in cd_diagram(result).axes[0].texts]
    assert f"CD = {result.cd:.2f}" in texts
    assert {"A (1.25)", "B (2.00)", "C (2.75)"} <= set(texts)
    wide = friedman_test(_frame({(m, 0.5, s): float(-ord(m)) for m in "ABCDE" for s in range(8)}))
    assert wide.cd == pytest.approx(2.728 * math.sqrt(30 / 48), abs=1e-3)  # 2.16: spans two rank steps
    assert wide.cliques() == [("A", "B", "C"), ("B", "C", "D"), ("C", "D", "E")]


def test_interval_plot_draws_a_bar_per_method_and_target_and_the_control_line(ranked):
    control = pd.DataFrame([_row(CONTROL_METHOD, 0.0, s, 1.0 + s) for s in range(4)])
    intervals = seed_intervals(pd.concat([ranked, control], ignore_index=True))
    fig = interval_plot(intervals)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["90%"]
    assert len(ax.containers) == 3  # one errorbar per method
    assert any(list(ln.get_ydata()) == [2.5, 2.5] for ln in ax.get_lines())  # the control's mean
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["A", "B", "C", f"{CONTROL_METHOD} (control)", "dense"]


def test_tables_render_the_numbers_and_escape_latex():
    values = {
        (m, t, s): float(s + i) for (i, m), t, s in product(enumerate(("a_b", "c&d")), (0.5,), range(3))
    }
    frame = _frame(values)
    md = intervals_markdown(seed_intervals(frame), caption="My_table")
    assert "| a_b | 1.00 [" in md and md.startswith("Table: My_table.")
    tex = intervals_latex(seed_intervals(frame), caption="My_table of ΔT ± 5%", label="tab:x")
    assert r"a\_b" in tex and r"c\&d" in tex and r"50\%" in tex and tex.isascii()
    assert r"My\_table of $\Delta$T $\pm$ 5\%." in tex  # the caption is text: escaped, symbols in math
    result = friedman_test(frame)
    assert "| a_b | 2.00 |" in ranks_markdown(result) and "CD = " in ranks_markdown(result)
    ranks_tex = ranks_latex(result, caption="R")
    assert r"$\chi^2$" in ranks_tex and ranks_tex.isascii()
    tests = pairwise_tests(frame)
    assert "| a_b | c&d | 3 |" in pairwise_markdown(tests)
    assert pairwise_latex(tests).isascii() and r"c\&d" in pairwise_latex(tests)


def test_metric_directions_and_the_control_name():
    import mtlprune.spec
    from mtlprune.analysis.stats import metric_sign

    assert [metric_sign(m) for m in ("delta_t", "delta_m_control", "delta_t.normal")] == [1, 1, 1]
    assert metric_sign("normal.mean") == -1 and metric_sign("segment_semantic.miou") == 1
    with pytest.raises(KeyError, match="unknown metric column"):
        metric_sign("achieved_sparsity")
    if hasattr(mtlprune.spec, "CONTROL_METHOD"):  # the planner's name of the control row
        assert mtlprune.spec.CONTROL_METHOD == CONTROL_METHOD
