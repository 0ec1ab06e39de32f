"""Markdown and LaTeX renderings of :mod:`mtlprune.analysis.stats`, for papers and the report.

Three tables: the seed intervals (method × target, "mean [low, high]"), the average ranks with the
Friedman test and the Nemenyi critical difference in the caption, and the pairwise tests with their
Holm-adjusted p-values. They share the conventions of :mod:`mtlprune.analysis.tables` (its escaping and
number formatting, a ``Table: caption`` line and GFM pipes in Markdown that
:func:`mtlprune.analysis.html.markdown_table_html` turns into the page's HTML, a booktabs ``table`` in LaTeX).
The LaTeX is plain ASCII with every value and the caption escaped (``_``, ``%``, ``&``, ...), so it
compiles with ``\\usepackage{booktabs}`` and ``graphicx`` (wide tables shrink to the line width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mtlprune.analysis.latex import latex_table
from mtlprune.analysis.stats import SETTING_KEYS, FriedmanResult, metric_sign
from mtlprune.analysis.tables import KEY_HEADERS, LATEX, MARKDOWN, _key_text, _Style

__all__ = [
    "intervals_latex",
    "intervals_markdown",
    "pairwise_latex",
    "pairwise_markdown",
    "ranks_latex",
    "ranks_markdown",
]

# metric → (Markdown, LaTeX) name.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "delta_t": ("ΔT", r"$\Delta_T$"),
    "delta_m": ("Δm", r"$\Delta_m$"),
}
CONTROL_LABEL = " (control)"


def _escape(style: _Style, text: str) -> str:
    """Text escaped for the format (in LaTeX also the Greek letters and symbols, so it compiles)."""
    return style.escape(text)


def _metric_name(metric: str, style: _Style) -> str:
    names = METRIC_NAMES.get(metric)
    return (names[1] if style.latex else names[0]) if names else _escape(style, metric)


def _math(markdown: str, latex: str, style: _Style) -> str:
    return latex if style.latex else markdown


def _num(value: Any, style: _Style, digits: int = 2) -> str:
    value = float(value)
    return style.unavailable if not math.isfinite(value) else style.number(value, digits)


def _p(value: Any, style: _Style) -> str:
    """A p-value: 3 decimals, "<0.001" below that, "–" when undefined."""
    value = float(value)
    if not math.isfinite(value):
        return style.unavailable
    if value < 0.001:
        return "$<$0.001" if style.latex else "<0.001"
    return f"{value:.3f}"


def _render(
    headers: Sequence[str],
    align: str,
    rows: Sequence[Sequence[str]],
    caption: str,
    style: _Style,
    label: str | None = None,
) -> str:
    """A table of already formatted cells; ``align`` has one letter per column, ``l`` or ``r``."""
    if not style.latex:
        lines = [f"Table: {caption}", "", "| " + " | ".join(headers) + " |"]
        lines.append("| " + " | ".join(":---" if a == "l" else "---:" for a in align) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return latex_table(lines, caption, label=label)


def _sentence(text: str | None, style: _Style) -> list[str]:
    if not text:
        return []
    text = _escape(style, text.strip())
    return [text if text[-1] in ".!?" else text + "."]


def _settings(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(varying setting keys: table columns, caption sentences of the constant ones)."""
    varying, constant = [], []
    for key in SETTING_KEYS:
        if key not in frame:
            continue
        values = frame[key].dropna().unique()
        if len(values) > 1:
            varying.append(key)
        elif len(values) == 1:
            constant.append((key, _key_text(key, values[0])))
    return varying, [f"{KEY_HEADERS.get(k, k).lower()} {v}" for k, v in constant]


# ------------------------------------------------------------------------------------------ intervals


def _interval_cell(row: pd.Series, style: _Style, digits: int) -> str:
    if int(row["n_seeds"]) == 0:
        return "failed" if int(row["n_failed"]) > 0 else style.missing
    mean = float(row["mean"])
    if not math.isfinite(mean):
        return style.unavailable
    text = style.number(mean, digits)
    if int(row["n_seeds"]) == 1:
        return f"{text} (n=1)"
    low, high = float(row["ci_low"]), float(row["ci_high"])
    return f"{text} [{style.number(low, digits)}, {style.number(high, digits)}]"


def _intervals(
    intervals: pd.DataFrame, caption: str | None, style: _Style, label: str | None, digits: int
) -> str:
    metric = str(intervals.attrs.get("metric", "delta_t"))
    level = float(intervals.attrs.get("level", 0.95))
    varying, constant = _settings(intervals)
    targets = sorted(float(t) for t in intervals["target_sparsity"].dropna().unique())
    headers = [KEY_HEADERS.get(k, k) for k in varying] + ["Method"]
    headers += [_escape(style, _key_text("target_sparsity", t)) for t in targets]
    rows = []
    order = intervals.assign(_c=~intervals["control"].astype(bool)).sort_values([*varying, "_c", "method"])
    for _, group in order.groupby([*varying, "_c", "method"], sort=False, dropna=False):
        first = group.iloc[0]
        name = _escape(style, str(first["method"])) + (CONTROL_LABEL if bool(first["control"]) else "")
        cells = {float(r["target_sparsity"]): _interval_cell(r, style, digits) for _, r in group.iterrows()}
        row = [_escape(style, _key_text(k, first[k])) for k in varying] + [name]
        rows.append(row + [cells.get(t, "") for t in targets])
    pct = r"\%" if style.latex else "%"
    n_resamples = int(intervals.attrs.get("n_resamples", 10_000))
    parts = _sentence(caption, style)
    parts.append(
        f"{_metric_name(metric, style)}: mean over seeds [{100 * level:g}{pct} percentile-bootstrap "
        f"interval, {n_resamples} resamples of the seeds, NumPy seed {intervals.attrs.get('seed', 0)}]."
    )
    if constant:
        parts.append("Setting: " + "; ".join(_escape(style, c) for c in constant) + ".")
    parts.append(
        "n=1: one finished seed, no interval; failed: no seed finished; "
        f"{style.missing}: not run yet; {style.unavailable}: a finished seed without a value."
    )
    align = "l" * (len(varying) + 1) + "r" * len(targets)
    return _render(headers, align, rows, " ".join(parts), style, label)


def intervals_markdown(intervals: pd.DataFrame, caption: str | None = None, *, digits: int = 2) -> str:
    """:func:`mtlprune.analysis.stats.seed_intervals` as Markdown: rows method (and varying setting keys),
    columns targets, cells "mean [low, high]"; the control row is marked "(control)"."""
    return _intervals(intervals, caption, MARKDOWN, None, digits)


def intervals_latex(
    intervals: pd.DataFrame, caption: str | None = None, label: str | None = None, *, digits: int = 2
) -> str:
    """The same table as :func:`intervals_markdown`, as a booktabs LaTeX table (caption escaped)."""
    return _intervals(intervals, caption, LATEX, label, digits)


# ---------------------------------------------------------------------------------------------- ranks


def _blocks_text(result: FriedmanResult, style: _Style) -> str:
    by = "setting, target sparsity and seed" if result.block_by == "seed" else "setting and target sparsity"
    mean = "" if result.block_by == "seed" else " on the mean over the seeds every method finished"
    dropped = (
        f" {result.n_dropped} incomplete block(s) left out (a method without a finished cell or value)"
        if result.n_dropped
        else " no block left out"
    )
    return f"Blocks: {by}{mean}; N = {result.n_blocks} complete block(s),{dropped}."


def _ranks(result: FriedmanResult, caption: str | None, style: _Style, label: str | None) -> str:
    metric = _metric_name(result.metric, style)
    headers = ["Method", "Mean rank", f"Mean {metric}", "Wins"]
    rows = [
        [_escape(style, str(r.method)), _num(r.mean_rank, style), _num(r.mean_value, style), str(int(r.wins))]
        for r in result.ranks.itertuples(index=False)
    ]
    chi2 = _math("χ²", r"$\chi^2$", style)
    alpha = _math("α", r"$\alpha$", style)
    parts = _sentence(caption, style)
    parts.append(
        f"Average rank of {metric} within each block (1 = best, ties share the average rank); wins: blocks "
        "ranked first."
    )
    parts.append(_blocks_text(result, style))
    parts.append(
        f"Friedman {chi2} = {_num(result.statistic, style)} (k = {result.k}, df = {result.k - 1}), "
        f"p = {_p(result.p_value, style)}; Iman-Davenport F = {_num(result.iman_davenport, style)}, "
        f"p = {_p(result.iman_davenport_p, style)}."
    )
    parts.append(
        f"Nemenyi critical difference at {alpha} = {result.alpha:g}: CD = {_num(result.cd, style, 3)} "
        f"(q = {_num(result.q_alpha, style, 3)}); mean ranks closer than CD do not differ significantly."
    )
    return _render(headers, "lrrr", rows, " ".join(parts), style, label)


def ranks_markdown(result: FriedmanResult, caption: str | None = None) -> str:
    """:func:`mtlprune.analysis.stats.friedman_test` as Markdown: mean rank, mean value and wins per method;
    the caption gives the blocks, Friedman's χ² and p, Iman–Davenport's F and p, N, k and the CD."""
    return _ranks(result, caption, MARKDOWN, None)


def ranks_latex(result: FriedmanResult, caption: str | None = None, label: str | None = None) -> str:
    """The same table as :func:`ranks_markdown`, as a booktabs LaTeX table (caption escaped)."""
    return _ranks(result, caption, LATEX, label)


# -------------------------------------------------------------------------------------- pairwise tests


def _pairwise(tests: pd.DataFrame, caption: str | None, style: _Style, label: str | None) -> str:
    metric = str(tests.attrs.get("metric", "delta_t"))
    alpha = float(tests.attrs.get("alpha", 0.05))
    name = _metric_name(metric, style)
    test = str(tests.attrs.get("test", "wilcoxon"))
    sign = metric_sign(metric)
    headers = ["Method A", "Method B", "n", f"Mean {name} A$-$B" if style.latex else f"Mean {name} A−B"]
    headers += ["Wins A:B", "Statistic", "p", "p (Holm)", "Verdict"]
    rows = []
    for r in tests.itertuples(index=False):
        if not math.isfinite(float(r.p_holm)):
            verdict = style.unavailable
        elif r.reject:
            verdict = "A better" if sign * float(r.mean_diff) > 0 else "B better"
        else:
            verdict = "n.s."
        rows.append(
            [
                _escape(style, str(r.method_a)),
                _escape(style, str(r.method_b)),
                str(int(r.n_pairs)),
                _num(r.mean_diff, style),
                f"{int(r.wins_a)}:{int(r.wins_b)}",
                _num(r.statistic, style, 1),
                _p(r.p_value, style),
                _p(r.p_holm, style),
                verdict,
            ]
        )
    alpha_text = _math("α", r"$\alpha$", style)
    block_by = tests.attrs.get("block_by", "seed")
    blocks = "setting, target sparsity and seed" if block_by == "seed" else "setting and target (seed means)"
    parts = _sentence(caption, style)
    if test == "wilcoxon":
        parts.append(
            f"Two-sided Wilcoxon signed-rank test of {name} paired over the blocks ({blocks}) where both "
            "methods finished; zero differences split between the rank sums; statistic: the smaller rank sum."
        )
    else:
        parts.append(f"Paired t-test of {name} over the blocks ({blocks}) where both methods finished.")
    parts.append(
        f"p (Holm): Holm-Bonferroni over the {int(tests['p_value'].notna().sum())} pairs with a p-value; "
        f"verdict at {alpha_text} = {alpha:g} by the sign of the mean difference (n.s.: not significant); "
        "wins: blocks where each is better."
    )
    if (tests["n_pairs"] < 6).any() and test == "wilcoxon":
        reach = _math("p < 0.05", "$p < 0.05$", style)
        parts.append(f"With fewer than 6 pairs the Wilcoxon test cannot reach {reach}.")
    return _render(headers, "llrrrrrrl", rows, " ".join(parts), style, label)


def pairwise_markdown(tests: pd.DataFrame, caption: str | None = None) -> str:
    """:func:`mtlprune.analysis.stats.pairwise_tests` as Markdown: one row per pair with n, the mean
    difference, wins, the statistic, p, the Holm-adjusted p and the verdict at the frame's alpha."""
    return _pairwise(tests, caption, MARKDOWN, None)


def pairwise_latex(tests: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """The same table as :func:`pairwise_markdown`, as a booktabs LaTeX table (caption escaped)."""
    return _pairwise(tests, caption, LATEX, label)
