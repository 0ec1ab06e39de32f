"""Paper tables and summaries on a hand-made results frame: golden Markdown/LaTeX, CI, AUC, Pareto."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mtlprune.analysis import (
    bootstrap_ci,
    comparison_table,
    delta_t_auc,
    load_published,
    pareto_dominated,
    table2_latex,
    table2_layout,
    table2_markdown,
    to_latex,
    to_markdown,
    with_bootstrap,
)
from mtlprune.analysis.latex import latex_escape
from mtlprune.analysis.tables import (
    EmptyTableWarning,
    sparsity_misses,
    sparsity_misses_latex,
    sparsity_misses_markdown,
)

TASKS = "segment_semantic,normal,depth_zbuffer"
SETTING = {"dataset": "nyuv2", "tasks": TASKS, "arch": "mobilenetv2", "width": 1.0, "head_width": 1.0}
METRICS = ["segment_semantic.miou", "normal.mean", "depth_zbuffer.abs_err", "delta_t"]


def _row(method: str, target: float, seed: int, status: str = "done", error: str | None = None, **values):
    row = {
        **SETTING,
        "run_id": f"{method}-{target}-{seed}",
        "method": method,
        "method_name": method,
        "target_sparsity": target,
        "seed": seed,
        "protocol": "standard",
        "status": status,
        "error": error,
    }
    if status == "done":
        miou, pix, mean, abs_err, dt = values["m"]
        row.update(
            {
                "segment_semantic.miou": miou,
                "segment_semantic.pixel_acc": pix,
                "normal.mean": mean,
                "depth_zbuffer.abs_err": abs_err,
                "delta_t": dt,
                "achieved_sparsity": target,
                "sparsity.backbone": target - 0.05,
            }
        )
    return row


BOOM = "RuntimeError: boom | here\nTraceback (most recent call last): ..."


@pytest.fixture
def frame() -> pd.DataFrame:
    """Two targets × two seeds: three finished methods, a failed one, a pending one, a half-failed cell."""
    rows = [
        _row("magnitude", 0.5, 0, m=(0.40, 0.60, 20.0, 0.600, -1.0)),
        _row("magnitude", 0.5, 1, m=(0.42, 0.62, 22.0, 0.620, -3.0)),
        _row("snip", 0.5, 0, m=(0.30, 0.50, 19.0, 0.700, -5.0)),
        _row("snip", 0.5, 1, m=(0.30, 0.52, 19.0, 0.700, -7.0)),
        _row("adapmtl", 0.5, 0, m=(0.35, 0.55, 21.0, 0.650, 2.0)),
        _row("adapmtl", 0.5, 1, m=(0.37, 0.55, 21.0, 0.650, 4.0)),
        _row("lth", 0.5, 0, status="failed", error=BOOM),
        _row("lth", 0.5, 1, status="failed", error=BOOM),
        _row("disparse-static", 0.5, 0, status="pending"),
        _row("disparse-static", 0.5, 1, status="pending"),
        _row("magnitude", 0.9, 0, m=(0.20, 0.40, 25.0, 0.800, -10.0)),
        _row("magnitude", 0.9, 1, m=(0.20, 0.40, 25.0, 0.800, -10.0)),
        _row("snip", 0.9, 0, m=(0.25, 0.45, 24.0, 0.900, -8.0)),
        _row("snip", 0.9, 1, m=(0.27, 0.45, 24.0, 0.900, -12.0)),
        _row("adapmtl", 0.9, 0, m=(0.30, 0.50, 23.0, 0.750, -2.0)),
        _row("adapmtl", 0.9, 1, status="failed", error="ValueError: diverged"),
    ]
    return pd.DataFrame(rows)


DELTA_T_MD = (
    "ΔT (AdapMTL): per task t, ΔT_t = 100 · Σ_i s_i (M_i − M_i^dense) / M_i^dense, a sum over the task's "
    "ΔT metrics i with s_i = +1 if higher is better and −1 if lower is better; ΔT is the mean of ΔT_t over "
    "the tasks; the dense model has the same dataset, tasks, architecture, training, seed and protocol; "
    "positive is better than dense. ΔT metrics: NYU-v2: every metric of the task."
)
GOLDEN_MD = "\n".join(
    [
        "Table: Demo. Setting: dataset NYU-v2; tasks segment_semantic, normal, depth_zbuffer; arch "
        "MobileNetV2; width 1; head width 1. Evaluation protocol: standard. Mean ± sample std (ddof 1) over "
        "2 seeds per cell. n=k of N: only k of the N planned seeds finished. Units: Seg mIoU in %; Normal "
        "Mean in °; Depth Abs err in m. ↑/↓: higher/lower is better; the best value of a column among rows "
        "of the same setting and protocol in bold, the "
        f"second best underlined (compared as displayed). {DELTA_T_MD} failed: no seed finished (first error "
        "line in the notes); —: not run yet.",
        "",
        "| Target | Method | Seg mIoU ↑ | Normal Mean ↓ | Depth Abs err ↓ | ΔT ↑ |",
        "| :--- | :--- | ---: | ---: | ---: | ---: |",
        "| 50% | adapmtl | <u>36.00 ± 1.41</u> | 21.00 ± 0.00 | <u>0.650 ± 0.000</u> | **3.00 ± 1.41** |",
        "| 50% | disparse-static | — | — | — | — |",
        "| 50% | lth[^1] | failed | failed | failed | failed |",
        "| 50% | magnitude | **41.00 ± 1.41** | 21.00 ± 1.41 | **0.610 ± 0.014** | <u>-2.00 ± 1.41</u> |",
        "| 50% | snip | 30.00 ± 0.00 | **19.00 ± 0.00** | 0.700 ± 0.000 | -6.00 ± 1.41 |",
        "| 90% | adapmtl (n=1 of 2)[^2] | **30.00** | **23.00** | **0.750** | **-2.00** |",
        "| 90% | magnitude | 20.00 ± 0.00 | 25.00 ± 0.00 | <u>0.800 ± 0.000</u> | -10.00 ± 0.00 |",
        "| 90% | snip | <u>26.00 ± 1.41</u> | <u>24.00 ± 0.00</u> | 0.900 ± 0.000 | -10.00 ± 2.83 |",
        "",
        "[^1]: lth, 50%: failed: RuntimeError: boom | here",
        "[^2]: adapmtl, 90%: 1 of 2 seeds failed: ValueError: diverged",
        "",
    ]
)
GOLDEN_TEX = "\n".join(
    [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption[{Demo.}]{Demo. Setting: dataset NYU-v2; tasks segment\_semantic, normal, depth\_zbuffer; "
        r"arch MobileNetV2; width 1; head width 1. Evaluation protocol: standard. Mean $\pm$ sample std "
        r"(ddof 1) over 2 seeds per cell. n=k of N: only k of the N planned seeds finished. Units: Seg mIoU "
        r"in \%; Normal Mean in $^\circ$; Depth Abs err in m. "
        r"$\uparrow$/$\downarrow$: higher/lower is better; the best value of a column among rows of the same "
        r"setting and protocol in bold, the second best underlined (compared as displayed). $\Delta_T$ "
        r"(AdapMTL): per task $t$, $\Delta_T^t = 100 \sum_i s_i (M_i - M_i^{\mathrm{dense}}) / "
        r"M_i^{\mathrm{dense}}$, a sum over the task's $\Delta_T$ metrics $i$ with $s_i = +1$ if higher is "
        r"better and $-1$ if lower is better; $\Delta_T$ is the mean of $\Delta_T^t$ over the tasks; the "
        r"dense model has the same dataset, tasks, architecture, training, seed and protocol; positive is "
        r"better than dense. $\Delta_T$ metrics: NYU-v2: every metric of the task. failed: no seed finished; "
        r"---: not run yet.}",
        r"\label{tab:demo}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{llrrrr}",
        r"\toprule",
        r"Target & Method & Seg mIoU $\uparrow$ & Normal Mean $\downarrow$ & Depth Abs err $\downarrow$ & "
        r"$\Delta_T$ $\uparrow$ \\",
        r"\midrule",
        r"50\% & adapmtl & \underline{36.00 $\pm$ 1.41} & 21.00 $\pm$ 0.00 & \underline{0.650 $\pm$ 0.000} & "
        r"\textbf{3.00 $\pm$ 1.41} \\",
        r" & disparse-static & --- & --- & --- & --- \\",
        r" & lth & failed & failed & failed & failed \\",
        r" & magnitude & \textbf{41.00 $\pm$ 1.41} & 21.00 $\pm$ 1.41 & \textbf{0.610 $\pm$ 0.014} & "
        r"\underline{$-$2.00 $\pm$ 1.41} \\",
        r" & snip & 30.00 $\pm$ 0.00 & \textbf{19.00 $\pm$ 0.00} & 0.700 $\pm$ 0.000 & $-$6.00 $\pm$ 1.41 \\",
        r"\midrule",
        r"90\% & adapmtl (n=1 of 2) & \textbf{30.00} & \textbf{23.00} & \textbf{0.750} & \textbf{$-$2.00} \\",
        r" & magnitude & 20.00 $\pm$ 0.00 & 25.00 $\pm$ 0.00 & \underline{0.800 $\pm$ 0.000} & "
        r"$-$10.00 $\pm$ 0.00 \\",
        r" & snip & \underline{26.00 $\pm$ 1.41} & \underline{24.00 $\pm$ 0.00} & 0.900 $\pm$ 0.000 & "
        r"$-$10.00 $\pm$ 2.83 \\",
        r"\bottomrule",
        r"\end{tabular}",
        "}",
        r"\end{table}",
        "",
    ]
)


# ------------------------------------------------------------------------------------- comparison_table


def test_comparison_statistics_by_hand(frame):
    table = comparison_table(frame, metrics=METRICS)
    cells = table.set_index(["target_sparsity", "method"])
    magnitude = cells.loc[(0.5, "magnitude")]
    assert magnitude["segment_semantic.miou.mean"] == pytest.approx(0.41)
    assert magnitude["segment_semantic.miou.std"] == pytest.approx(0.02 / math.sqrt(2))  # ddof 1
    assert magnitude["delta_t.mean"] == pytest.approx(-2.0)
    assert magnitude["delta_t.n"] == 2
    assert magnitude["status"] == "done"
    # Never dropped: the failed, the pending and the half-failed cell keep their rows and statuses.
    assert cells.loc[(0.5, "lth"), "status"] == "failed"
    assert cells.loc[(0.5, "lth"), "error"] == "RuntimeError: boom | here"
    assert math.isnan(cells.loc[(0.5, "lth"), "delta_t.mean"])
    assert cells.loc[(0.5, "disparse-static"), "status"] == "pending"
    assert cells.loc[(0.5, "disparse-static"), "n_missing"] == 2
    partial = cells.loc[(0.9, "adapmtl")]
    assert (partial["status"], partial["n_seeds"], partial["n_failed"]) == ("partial", 1, 1)
    assert partial["delta_t.mean"] == -2.0 and math.isnan(partial["delta_t.std"])
    assert len(table) == 8
    assert list(table["method"][:5]) == ["adapmtl", "disparse-static", "lth", "magnitude", "snip"]


def test_default_metrics_are_the_vocabulary_columns_present_plus_delta_t(frame):
    table = comparison_table(frame)
    assert table.attrs["metrics"] == [
        "segment_semantic.miou",
        "segment_semantic.pixel_acc",
        "normal.mean",
        "depth_zbuffer.abs_err",
        "delta_t",
    ]


def test_bad_group_and_metric_are_named(frame):
    with pytest.raises(ValueError, match="seed"):
        comparison_table(frame, group=("dataset", "seed"))
    with pytest.raises(KeyError, match="normal.median"):
        comparison_table(frame, metrics=["normal.median"])


def test_markdown_golden(frame):
    table = comparison_table(frame, metrics=METRICS)
    assert to_markdown(table, caption="Demo") == GOLDEN_MD


def test_latex_golden(frame):
    table = comparison_table(frame, metrics=METRICS)
    assert to_latex(table, caption="Demo", label="tab:demo") == GOLDEN_TEX


def test_rendering_without_attrs_recognises_the_shape(frame):
    table = comparison_table(frame, metrics=METRICS)
    table.attrs.clear()
    assert to_markdown(table, caption="Demo") == GOLDEN_MD


def _md_cells(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| ") and f"| {label} |" in line)
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_highlight_follows_direction_and_display_rounding():
    """Lower-is-better gets bold on the smallest; equal displayed values tie; underline needs 3 values."""
    rows = []
    for method, abs_err, miou in (
        ("a", 0.6001, 0.30),
        ("b", 0.6004, 0.20),
        ("c", 0.7, 0.10),
        ("d", 0.8, 0.0),
    ):
        rows.append(_row(method, 0.9, 0, m=(miou, 0.5, 20.0, abs_err, 0.0)))
    table = comparison_table(pd.DataFrame(rows), metrics=["depth_zbuffer.abs_err", "segment_semantic.miou"])
    text = to_markdown(table)
    assert _md_cells(text, "a") == ["a", "**0.600**", "**30.00**"]
    assert _md_cells(text, "b") == ["b", "**0.600**", "<u>20.00</u>"]  # 0.6004 shows as 0.600: a tie
    assert _md_cells(text, "c") == ["c", "<u>0.700</u>", "10.00"]
    assert _md_cells(text, "d") == ["d", "0.800", "0.00"]
    two = comparison_table(pd.DataFrame(rows[2:]), metrics=["depth_zbuffer.abs_err"])
    assert _md_cells(to_markdown(two), "d") == ["d", "0.800"]  # two values: the worse is not "second best"


def test_arrows_follow_the_vocabulary(frame):
    table = comparison_table(
        frame, metrics=["normal.mean", "segment_semantic.pixel_acc", "achieved_sparsity"]
    )
    header = to_markdown(table).splitlines()[2]
    assert header == "| Target | Method | Normal Mean ↓ | Seg PixAcc ↑ | Sparsity |"
    tex_header = to_latex(table).splitlines()[6]  # table, centering, caption, resizebox, tabular, toprule
    assert tex_header == r"Target & Method & Normal Mean $\downarrow$ & Seg PixAcc $\uparrow$ & Sparsity \\"


def test_caption_names_protocols_and_seed_counts(frame):
    published = {
        **SETTING,
        "run_id": "published:x:t:snip",
        "method": "snip",
        "target_sparsity": 0.9,
        "protocol": "adapmtl",
        "status": "published",
        "source": "x",
        "table": "t",
        "paper_label": "SNIP",
        "starts_from": "init",
        "delta_t": -9.99,
    }
    extra = [_row("snip", 0.5, 2, m=(0.3, 0.5, 19.0, 0.7, -6.0))]
    both = pd.concat([frame, pd.DataFrame([*extra, published])], ignore_index=True)
    text = to_markdown(comparison_table(both, metrics=["delta_t"]))
    assert "Evaluation protocols: adapmtl, standard (compare rows of the same protocol only)." in text
    assert "over 2–3 seeds per cell" in text
    assert "Rows marked (published): as printed in the paper" in text
    assert _md_cells(text, "snip (published)") == ["90%", "adapmtl", "snip (published)", "-9.99"]
    assert DELTA_T_MD in text


def test_latex_escapes_method_names():
    rows = [_row("my_method%&#", 0.9, 0, m=(0.3, 0.5, 20.0, 0.6, 1.0))]
    text = to_latex(comparison_table(pd.DataFrame(rows), metrics=["delta_t"]))
    assert r"my\_method\%\&\# & 1.00 \\" in text


# ------------------------------------------------------------------------------------------- Table 2


@pytest.fixture
def published() -> pd.DataFrame:
    """Two rows of a made-up paper table in load_published's shape: its dense row and SNIP at 90%."""
    common = {
        "dataset": "nyuv2",
        "tasks": TASKS,
        "arch": "mobilenetv2",
        "protocol": "adapmtl",
        "status": "published",
        "source": "paper",
        "table": "t2",
        "width": math.nan,
        "head_width": math.nan,
    }
    dense = {
        **common,
        "run_id": "published:paper:t2:dense",
        "method": "dense",
        "paper_label": "Dense",
        "starts_from": "-",
        "target_sparsity": 0.0,
        "segment_semantic.miou": 0.50,
        "normal.mean": 18.0,
        "delta_t": 0.0,
    }
    snip = {
        **common,
        "run_id": "published:paper:t2:snip",
        "method": "snip",
        "paper_label": "SNIP",
        "starts_from": "init",
        "target_sparsity": 0.9,
        "segment_semantic.miou": 0.45,
        "normal.mean": 19.0,
        "sparsity.backbone": 0.8,
        "delta_t": -7.5,
    }
    return pd.DataFrame([dense, snip])


def test_table2_layout_columns_rows_and_published(frame, published):
    table = table2_layout(frame, "nyuv2", "mobilenetv2", 0.9, published=published)
    assert list(table.columns) == [
        "label", "method", "protocol", "status", "n_seeds", "n_failed", "n_missing", "error",
        "segment_semantic.miou", "segment_semantic.pixel_acc", "normal.mean", "depth_zbuffer.abs_err",
        "sparsity.backbone", "achieved_sparsity", "delta_t",
    ]  # fmt: skip
    assert list(table["label"]) == ["adapmtl", "magnitude", "snip", "dense (published)", "snip (published)"]
    assert table.loc[1, "segment_semantic.miou"] == pytest.approx(0.20)
    assert table.loc[2, "delta_t"] == pytest.approx(-10.0)
    assert table.loc[2, "sparsity.backbone"] == pytest.approx(0.85)
    assert table.loc[4, "sparsity.backbone"] == pytest.approx(0.8)
    assert math.isnan(table.loc[4, "segment_semantic.pixel_acc"])
    assert (table.loc[0, "status"], table.loc[0, "n_seeds"]) == ("partial", 1)
    assert table.attrs["kind"] == "table2"


def test_table2_markdown_rows(frame, published):
    text = table2_markdown(table2_layout(frame, "nyuv2", "mobilenetv2", 0.9, published=published))
    header = (
        "| Protocol | Method | Seg mIoU ↑ | Seg PixAcc ↑ | Normal Mean ↓ | Depth Abs err ↓ "
        "| Sp. backbone | Sparsity | ΔT ↑ |"
    )
    assert header in text.splitlines()
    # Dense is the reference and never highlighted; the published SNIP is the only competitor of its
    # protocol, so nothing is bold there; our rows compete among themselves only.
    assert _md_cells(text, "dense (published)") == [
        "adapmtl", "dense (published)", "50.00", "–", "18.00", "–", "–", "–", "0.00",
    ]  # fmt: skip
    assert _md_cells(text, "snip (published)") == [
        "adapmtl", "snip (published)", "45.00", "–", "19.00", "–", "80.00", "–", "-7.50",
    ]  # fmt: skip
    assert _md_cells(text, "magnitude") == [
        "standard", "magnitude", "20.00", "40.00", "25.00", "<u>0.800</u>", "85.00", "90.00", "-10.00",
    ]  # fmt: skip
    title = "Table: Every metric per method (layout of AdapMTL's Table 2): NYU-v2, MobileNetV2, target 90%."
    assert text.startswith(title)
    setting = "Setting: dataset NYU-v2; tasks segment_semantic, normal, depth_zbuffer; arch MobileNetV2; "
    assert setting + "target sparsity 90%." in text
    assert "Mean over 2 seeds per cell." in text  # no std in Table 2
    tex = table2_latex(table2_layout(frame, "nyuv2", "mobilenetv2", 0.9, published=published), label="t2")
    assert r"adapmtl & dense (published) & 50.00 & -- & 18.00 & -- & -- & -- & 0.00 \\" in tex
    assert tex.count(r"\midrule") == 2  # under the header, and between our rows and the paper's
    assert tex.startswith("\\begin{table*}[t]\n") and tex.endswith("\\end{table*}\n")  # both columns
    # Two-level header: a task's (or the sparsities') neighbouring columns share a label and a rule.
    lines = tex.splitlines()
    head = lines[lines.index(r"\toprule") + 1 : lines.index(r"\toprule") + 4]
    assert head == [
        r" &  & \multicolumn{2}{c}{Seg} &  &  & \multicolumn{2}{c}{Sparsity} &  \\",
        r"\cmidrule(lr){3-4} \cmidrule(lr){7-8}",
        r"Protocol & Method & mIoU $\uparrow$ & PixAcc $\uparrow$ & Normal Mean $\downarrow$ & "
        r"Depth Abs err $\downarrow$ & backbone & overall & $\Delta_T$ $\uparrow$ \\",
    ]


def test_table2_with_the_real_adapmtl_rows(frame):
    table = table2_layout(frame, "nyuv2", "mobilenetv2", 0.9, published=load_published(sources=["adapmtl"]))
    paper = table[table["status"] == "published"]
    assert list(paper["method"]) == [
        "dense", "snip", "lth", "imp", "disparse-dynamic", "adapmtl-single-threshold", "adapmtl",
    ]  # fmt: skip
    adapmtl = paper.set_index("method").loc["adapmtl"]
    assert adapmtl["delta_t.normal"] == pytest.approx(5.25)
    assert adapmtl["sparsity.head.segment_semantic"] == pytest.approx(0.8618)
    # AdapMTL's order: each task's metrics then its ΔT, component sparsities, overall ΔT last.
    assert list(table.columns[8:]) == [
        "segment_semantic.miou", "segment_semantic.pixel_acc", "delta_t.segment_semantic",
        "normal.mean", "normal.median", "normal.within_11_25", "normal.within_22_5", "normal.within_30",
        "delta_t.normal",
        "depth_zbuffer.abs_err", "depth_zbuffer.rel_err", "depth_zbuffer.delta_1_25",
        "depth_zbuffer.delta_1_25_2", "depth_zbuffer.delta_1_25_3", "delta_t.depth_zbuffer",
        "sparsity.backbone", "sparsity.head.segment_semantic", "sparsity.head.normal",
        "sparsity.head.depth_zbuffer", "achieved_sparsity", "delta_t",
    ]  # fmt: skip


def test_table2_without_rows_is_an_error(frame):
    with pytest.raises(ValueError, match="no row for dataset 'nyuv2', arch 'mobilenetv2', target 0.7"):
        table2_layout(frame, "nyuv2", "mobilenetv2", 0.7)


# ------------------------------------------------------------------------------------------- summaries


def test_bootstrap_degenerate_and_hand_cases():
    assert bootstrap_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
    assert bootstrap_ci([7.0]) == (7.0, 7.0)
    # Two seeds: resample means are 1 (p=1/4), 2 (1/2), 3 (1/4): both 2.5% tails sit on the extremes.
    assert bootstrap_ci([1.0, 3.0]) == (1.0, 3.0)
    low, high = bootstrap_ci([1.0, float("nan")])
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.0)


def test_bootstrap_contains_the_mean_and_widens_with_spread():
    base = [0.1, -0.3, 0.4, 0.0, -0.2]
    for k in (1.0, 2.0, 5.0):
        values = [10.0 + k * v for v in base]
        low, high = bootstrap_ci(values, n_resamples=2000)
        assert low < sum(values) / len(values) < high
        # Same seed, same resamples: the interval scales exactly with the spread around the centre.
        ref_low, ref_high = bootstrap_ci([10.0 + v for v in base], n_resamples=2000)
        assert high - low == pytest.approx(k * (ref_high - ref_low))
    assert bootstrap_ci(base, seed=1) == bootstrap_ci(base, seed=1)


def test_with_bootstrap_keeps_failed_cells(frame):
    table = with_bootstrap(frame, "delta_t", n_resamples=500).set_index(["target_sparsity", "method"])
    magnitude = table.loc[(0.5, "magnitude")]
    assert (magnitude["delta_t.mean"], magnitude["delta_t.ci_low"], magnitude["delta_t.ci_high"]) == (
        -2.0,
        -3.0,
        -1.0,
    )
    assert table.loc[(0.9, "magnitude"), "delta_t.ci_low"] == -10.0  # equal seeds: degenerate
    lth = table.loc[(0.5, "lth")]
    assert lth["n_failed"] == 2 and math.isnan(lth["delta_t.ci_low"])


def test_delta_t_auc_by_hand(frame):
    auc = delta_t_auc(frame).set_index("method")
    # magnitude: (0.5, −2) → (0.9, −10): 0.4 · (−2 − 10) / 2 = −2.4; over a 0.4 span: −6.
    assert auc.loc["magnitude", "auc"] == pytest.approx(-2.4)
    assert auc.loc["magnitude", "auc_normalised"] == pytest.approx(-6.0)
    # adapmtl: (0.5, 3) → (0.9, −2) (one finished seed at 0.9): 0.4 · 1 / 2 = 0.2.
    assert auc.loc["adapmtl", "auc"] == pytest.approx(0.2)
    assert bool(auc.loc["adapmtl", "complete"])
    assert auc.loc["lth", "n_points"] == 0 and math.isnan(auc.loc["lth", "auc"])
    three = pd.DataFrame(
        [
            _row("m", 0.5, 0, m=(0.3, 0.5, 20.0, 0.6, 0.0)),
            _row("m", 0.7, 0, m=(0.3, 0.5, 20.0, 0.6, -2.0)),
            _row("m", 0.9, 0, m=(0.3, 0.5, 20.0, 0.6, -6.0)),
            _row("m", 0.95, 0, status="failed", error="x"),
        ]
    )
    row = delta_t_auc(three).iloc[0]
    # 0.2 · (0 − 2)/2 + 0.2 · (−2 − 6)/2 = −0.2 − 0.8 = −1.0 over a 0.4 span.
    assert row["auc"] == pytest.approx(-1.0)
    assert row["auc_normalised"] == pytest.approx(-2.5)
    assert (row["n_points"], row["n_targets"], bool(row["complete"])) == (3, 4, False)


def test_pareto_dominance_golden(frame):
    table = pareto_dominated(frame).set_index(["target_sparsity", "method"])
    # At 50%: magnitude (0.41, 21, 0.61) beats adapmtl (0.36, 21, 0.65) on mIoU and abs err, ties normals;
    # snip keeps the best normal mean, so nothing dominates it.
    assert table.loc[(0.5, "adapmtl"), "dominated_by"] == ["magnitude"]
    assert not table.loc[(0.5, "magnitude"), "dominated"]
    assert not table.loc[(0.5, "snip"), "dominated"]
    assert pd.isna(table.loc[(0.5, "lth"), "dominated"])
    assert pd.isna(table.loc[(0.5, "disparse-static"), "dominated"])
    # At 90%: adapmtl (0.30, 23, 0.75) beats both others on every main metric.
    assert table.loc[(0.9, "magnitude"), "dominated_by"] == ["adapmtl"]
    assert table.loc[(0.9, "snip"), "dominated_by"] == ["adapmtl"]
    assert table.loc[(0.9, "adapmtl"), "dominated_by"] == []
    assert table.loc[(0.9, "snip"), "segment_semantic.miou.mean"] == pytest.approx(0.26)


# ------------------------------------------------------------------------------------------------ latex


def test_latex_escape_golden():
    assert latex_escape("deeplab_resnet34 at 90% & #1 {x} ~ ^") == (
        r"deeplab\_resnet34 at 90\% \& \#1 \{x\} \textasciitilde{} \textasciicircum{}"
    )
    assert latex_escape("Δm ≤ 1° <x> a\\b") == (
        r"$\Delta$m $\leq$ 1$^\circ$ \textless{}x\textgreater{} a\textbackslash{}b"
    )


def test_caption_is_escaped_and_legend_float_and_resize_are_options(frame):
    table = comparison_table(frame, metrics=METRICS)
    bare = to_latex(table, caption="deeplab_resnet34 at 90% & more", legend=False, env="table*", resize=False)
    assert bare.splitlines()[:4] == [
        r"\begin{table*}[t]",
        r"\centering",
        r"\caption{deeplab\_resnet34 at 90\% \& more.}",
        r"\begin{tabular}{llrrrr}",
    ]
    assert bare.endswith("\\end{tabular}\n\\end{table*}\n") and "resizebox" not in bare
    full = to_latex(table, caption="Short")
    assert full.splitlines()[2].startswith(r"\caption[{Short.}]{Short. Setting: dataset NYU-v2;")
    assert to_markdown(table, caption="Short", legend=False).splitlines()[0] == "Table: Short."
    # Without a caption, a short one names the table and its setting.
    assert to_markdown(table, legend=False).splitlines()[0] == "Table: Comparison: NYU-v2, MobileNetV2."
    with pytest.raises(ValueError, match="env must be one of table, table\\*, got 'figure'"):
        to_latex(table, env="figure")


def test_a_table_without_a_finished_cell_says_so(frame):
    pending = frame[frame["status"].isin(["failed", "pending"])]
    table = comparison_table(pending, metrics=METRICS)
    with pytest.warns(EmptyTableWarning, match="no finished cell"):
        text = to_markdown(table, caption="Nothing yet", legend=False)
    assert text.splitlines()[0] == "Table: Nothing yet. No cell has finished yet: the table has no values."
    with pytest.warns(EmptyTableWarning):
        assert "No cell has finished yet" in to_latex(table)


def test_methods_on_the_delta_axis_are_named_in_the_caption(frame):
    axis = frame["method"].map(lambda m: "delta" if m == "adapmtl" else "prunable")
    marked = frame.assign(sparsity_axis=axis.where(frame["status"] == "done"))
    table = comparison_table(marked, metrics=[*METRICS, "achieved_sparsity"])
    assert table.attrs["delta_axis"] == ["adapmtl"]
    text = to_markdown(table)
    assert (
        "adapmtl: a base model plus sparse per-task weight deltas; their sparsity is that of the deltas"
        in text
    )
    assert "deltas" not in to_markdown(comparison_table(frame, metrics=[*METRICS, "achieved_sparsity"]))


# ------------------------------------------------------------------------- achieved against target sparsity


@pytest.fixture
def misses() -> pd.DataFrame:
    """Cells around their targets: two that miss by more than 0.1 pp, one exactly 0.1 pp off (within), one
    just inside, one on the delta axis (ECS-like, never listed), a pending one."""

    def row(method, target, seed, achieved, axis="prunable", status="done"):
        out = _row(
            method, target, seed, status=status, **({"m": (0.3, 0.5, 20.0, 0.6, -1.0)} if achieved else {})
        )
        if achieved:
            out.update(achieved_sparsity=achieved, sparsity_axis=axis)
        return out

    rows = [
        row("magnitude", 0.5, 0, 0.5),
        row("str", 0.5, 0, 0.4878),  # one finished seed: −1.22 pp
        row("str", 0.5, 1, None, status="failed"),
        row("ecs", 0.5, 0, 0.30, axis="delta"),  # its own axis: not a pruning sparsity
        row("snip", 0.5, 0, None, status="pending"),
        row("adapmtl(control=faithful)", 0.9, 0, 0.9172),  # mean 0.9255: +2.55 pp
        row("adapmtl(control=faithful)", 0.9, 1, 0.9338),
        row("adapmtl", 0.9, 0, 0.9005),  # mean 0.90065: 0.065 pp, within
        row("adapmtl", 0.9, 1, 0.9008),
        row("gmp", 0.9, 0, 0.901),  # exactly 0.1 pp: within (not "more than")
        row("gmp", 0.9, 1, 0.901),
    ]
    return pd.DataFrame(rows)


MISSES_LEGEND = (
    "Achieved: the share of zero weights among the prunable weights, counted in the weights, mean over the "
    "finished seeds (seed range: lowest to highest); difference: achieved minus target, in percentage "
    "points. Methods with a learned sparsity may end away from the target (AdapMTL's control faithful "
    "accepts any sparsity); rows whose sparsity is of weight deltas (ECS) are checked per task by the "
    "runner and not listed."
)


def test_sparsity_misses_lists_the_cells_more_than_a_tenth_of_a_point_off_by_hand(misses):
    table = sparsity_misses(misses)
    assert list(table["method"]) == ["str", "adapmtl(control=faithful)"]  # by target, then method
    rows = table.set_index("method")
    assert rows.loc["str", "n_seeds"] == 1 and rows.loc["str", "achieved_mean"] == 0.4878
    assert rows.loc["str", "difference"] == pytest.approx(-1.22, abs=1e-9)
    faithful = rows.loc["adapmtl(control=faithful)"]
    assert faithful["n_seeds"] == 2 and faithful["achieved_mean"] == pytest.approx(0.9255, abs=1e-12)
    assert (faithful["achieved_min"], faithful["achieved_max"]) == (0.9172, 0.9338)
    assert faithful["difference"] == pytest.approx(2.55, abs=1e-9)
    # A wider tolerance drops the str cell (1.22 pp) and keeps the faithful one (2.55 pp).
    assert list(sparsity_misses(misses, tolerance=0.02)["method"]) == ["adapmtl(control=faithful)"]
    assert sparsity_misses(misses[misses["method"] == "magnitude"]).empty


def test_sparsity_misses_markdown_and_latex_golden(misses):
    table = sparsity_misses(misses)
    assert sparsity_misses_markdown(table, caption="Misses") == "\n".join(
        [
            f"Table: Misses. {MISSES_LEGEND}",
            "",
            "| Setting | Method | Target | Achieved | Seed range | Difference (pp) | Seeds |",
            "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |",
            "| NYU-v2 · MobileNetV2 | str | 50% | 48.78% | – | -1.22 | 1 |",
            "| NYU-v2 · MobileNetV2 | adapmtl(control=faithful) | 90% | 92.55% | 91.72–93.38 | +2.55 | 2 |",
            "",
        ]
    )
    latex = sparsity_misses_latex(table, caption="Misses", label="tab:misses")
    assert latex.splitlines()[3:] == [
        r"\label{tab:misses}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{llrrrrr}",
        r"\toprule",
        r"Setting & Method & Target & Achieved & Seed range & Difference (pp) & Seeds \\",
        r"\midrule",
        r"NYU-v2 $\cdot$ MobileNetV2 & str & 50\% & 48.78\% & -- & $-$1.22 & 1 \\",
        r"NYU-v2 $\cdot$ MobileNetV2 & adapmtl(control=faithful) & 90\% & 92.55\% & 91.72--93.38 & +2.55 & "
        r"2 \\",
        r"\bottomrule",
        r"\end{tabular}",
        "}",
        r"\end{table}",
    ]
    assert latex.splitlines()[2].startswith(r"\caption[{Misses.}]{Misses. Achieved: the share")


def test_a_table_showing_the_achieved_sparsity_names_the_misses_in_its_caption(misses, frame):
    table = comparison_table(misses, metrics=["delta_t", "achieved_sparsity"])
    note = (
        "Achieved sparsity (mean over seeds) misses the target by more than 0.1 pp in 2 rows: str at 50%: "
        "48.78% (-1.22 pp); adapmtl(control=faithful) at 90%: 92.55% (+2.55 pp)."
    )
    assert note in to_markdown(table)
    assert (
        r"in 2 rows: str at 50\%: 48.78\% ($-$1.22 pp); adapmtl(control=faithful) at 90\%: 92.55\% "
        r"(+2.55 pp)." in to_latex(table)
    )
    # Table 2 at 90%: the one row of that target.
    layout = table2_layout(misses, "nyuv2", "mobilenetv2", 0.9)
    assert "in 1 row: adapmtl(control=faithful) at 90%: 92.55% (+2.55 pp)." in to_markdown(layout)
    # No note where every row is on target, or where the table does not show the achieved sparsity.
    assert "misses the target" not in to_markdown(
        comparison_table(frame, metrics=[*METRICS, "achieved_sparsity"])
    )
    assert "misses the target" not in to_markdown(comparison_table(misses, metrics=["delta_t"]))
