"""The report's Statistics section (mtlprune.analysis.stats): seed intervals, Friedman ranks with the CD
diagram, Holm-adjusted pairwise tests, paired differences, rank stability; with one seed, why not."""

from __future__ import annotations

import html
from collections import Counter
from typing import TYPE_CHECKING

import pandas as pd

from mtlprune.analysis.report.builder import SKIPPABLE, Builder, reason
from mtlprune.analysis.report.collect import ReportData

if TYPE_CHECKING:
    from mtlprune.analysis.html import Section

STATS_METRIC = "delta_t"
ONE_SEED = (
    "One seed per cell: no significance statement is possible. Confidence intervals, paired tests and the "
    "critical-difference diagram need at least two seeds per cell (seeds are what they resample and pair), "
    "so none are drawn; run more seeds for them."
)


def _compared_methods(frame: pd.DataFrame, metric: str) -> tuple[list[str], list[str]]:
    """(pruning methods with a finished finite value somewhere, the others): a method that never
    finished would make every block incomplete, so it is named and left out of ranks and tests."""
    from mtlprune.analysis.stats import is_control

    runs = frame[~is_control(frame) & (frame["status"] != "published")]
    done = runs[runs["status"] == "done"]
    finite = done[pd.to_numeric(done[metric], errors="coerce").notna()]
    ranked = sorted(set(finite["method"].astype(str)))
    return ranked, sorted(set(runs["method"].astype(str)) - set(ranked))


def statistics_section(data: ReportData, builder: Builder) -> Section:
    """The Statistics section: seed intervals, Friedman ranks with the CD diagram, pairwise Holm-adjusted
    tests, paired differences to the best method, rank stability; with one seed, the reason why not."""
    from mtlprune.analysis import stats as S
    from mtlprune.analysis.html import Section, frame_html, markdown_table_html
    from mtlprune.analysis.labels import display_frame
    from mtlprune.analysis.load import on_pruning_axis
    from mtlprune.analysis.stats_figures import cd_diagram, interval_plot
    from mtlprune.analysis.stats_tables import (
        intervals_latex,
        intervals_markdown,
        pairwise_latex,
        pairwise_markdown,
        ranks_latex,
        ranks_markdown,
    )
    from mtlprune.analysis.style import StyleMap

    # Blocks are (setting, target, seed): a delta-sparsity target (ECS) is not comparable with a pruning one.
    frame, metric, style = on_pruning_axis(data.frame), STATS_METRIC, builder.style
    name = data.title.removeprefix("Report: ")
    if metric not in frame or pd.to_numeric(frame[metric], errors="coerce").notna().sum() == 0:
        return Section("statistics", "Statistics", "<p>No finished cell has a ΔT: no statistics.</p>")
    methods, without = _compared_methods(frame, metric)
    intro = (
        f"<p>On ΔT of the runs (published rows have no seeds). Seeds are the resampling unit, and cells of "
        f"one setting and seed share a dense model, so every comparison pairs the same seeds. The "
        f"<code>{S.CONTROL_METHOD}</code> control is shown in the intervals, never ranked or tested.</p>"
    )
    if without:
        intro += f"<p>No finished ΔT, so not ranked or tested: {html.escape(', '.join(without))}.</p>"
    if S.max_seeds_per_cell(frame) < 2:
        body = f'<p class="note" id="stats-one-seed">{html.escape(ONE_SEED)}</p>' + intro
        try:
            ranks = S.average_ranks(frame, metric, methods=methods)
            n_blocks = int(ranks["n_blocks"].iloc[0]) if len(ranks) else 0
            body += (
                f"<p>Average ranks over {n_blocks} complete blocks (setting, target, seed), descriptive "
                "only:</p>"
            ) + frame_html(display_frame(ranks), digits=2, table_id="stats-ranks-descriptive")
        except SKIPPABLE as exc:
            builder.notes.append(f"average ranks not computed: {reason(exc)}")
        return Section("statistics", "Statistics", body)
    styles = StyleMap(str(m) for m in frame["method"].dropna().unique())
    children: list[Section] = []
    try:
        intervals = S.seed_intervals(frame, metric)
        figure = builder.figure(
            None,
            "stats_intervals",
            "mean ΔT over seeds with its 95% percentile-bootstrap interval, per method and target; "
            "dashed: the dense-finetune control; dotted: dense",
            lambda: interval_plot(intervals, styles=styles, style=style),
        )
        caption = f"Mean ΔT and 95% interval over seeds, {name}"
        markdown = intervals_markdown(intervals, caption=caption)
        builder.table("stats_intervals", markdown, intervals_latex(intervals, caption, "tab:stats_intervals"))
        body = (figure.html() if figure else "") + markdown_table_html(markdown, table_id="stats_intervals")
        children.append(Section("stats-intervals", "Mean ΔT and 95% interval over seeds", body))
    except SKIPPABLE as exc:
        builder.notes.append(f"seed intervals not computed: {reason(exc)}")
    best: str | None = None
    try:
        result = S.friedman_test(frame, metric, methods=methods)
    except SKIPPABLE as exc:
        builder.notes.append(f"Friedman test and CD diagram not computed: {reason(exc)}")
    else:
        best = str(result.ranks["method"].iloc[0])
        figure = builder.figure(
            None,
            "stats_cd",
            f"critical-difference diagram: mean rank of ΔT over {result.n_blocks} complete blocks "
            f"(setting, target, seed); bars join methods closer than CD = {result.cd:.2f} (Nemenyi, "
            f"α = {result.alpha:g})",
            lambda: cd_diagram(result, styles=styles, style=style),
        )
        caption = f"Average ranks of the methods, {name}"
        markdown = ranks_markdown(result, caption=caption)
        builder.table("stats_ranks", markdown, ranks_latex(result, caption, "tab:stats_ranks"))
        body = (figure.html() if figure else "") + markdown_table_html(markdown, table_id="stats_ranks")
        if result.n_dropped:
            reasons = Counter(str(r) for r in result.dropped["reason"])
            items = "".join(f"<li>{n} × {html.escape(r)}</li>" for r, n in reasons.most_common())
            body += f"<p>{result.n_dropped} incomplete block(s) left out:</p><ul>{items}</ul>"
        children.append(Section("stats-ranks", "Average ranks, Friedman test, critical difference", body))
    try:
        tests = S.pairwise_tests(frame, metric, methods=methods)
        if tests.empty:
            raise ValueError("fewer than two methods to compare")
        caption = f"Pairwise comparison of the methods, {name}"
        markdown = pairwise_markdown(tests, caption=caption)
        builder.table("stats_pairwise", markdown, pairwise_latex(tests, caption, "tab:stats_pairwise"))
        children.append(
            Section(
                "stats-pairwise",
                "Pairwise Wilcoxon tests, Holm-adjusted",
                markdown_table_html(markdown, table_id="stats_pairwise"),
            )
        )
    except SKIPPABLE as exc:
        builder.notes.append(f"pairwise tests not computed: {reason(exc)}")
    if best is not None and len(methods) > 1:
        diffs = S.paired_differences(frame, metric, baseline=best, methods=methods)
        keep = [c for c in diffs.columns if c not in ("tasks", "protocol", "width", "head_width", "method_b")]
        children.append(
            Section(
                "stats-differences",
                f"Paired difference to the best-ranked method ({best})",
                f"<p>ΔT of each method minus {html.escape(best)}'s, per setting and target, over the seeds "
                "both finished, with its 95% paired-bootstrap interval.</p>"
                + frame_html(display_frame(diffs[keep]), digits=2, table_id="stats-differences"),
            )
        )
    try:
        stability = S.rank_stability(frame, metric, methods=methods)
        text = (
            f"<p>Kendall's τ between the method rankings of every two seeds ({stability.n_seeds} seeds): "
            f"mean {stability.mean_tau:.2f}, min {stability.min_tau:.2f}.</p>"
        )
        children.append(
            Section(
                "stats-stability",
                "Rank stability across seeds",
                text + frame_html(display_frame(stability.pairs), digits=3, table_id="stats-stability"),
            )
        )
    except SKIPPABLE as exc:
        builder.notes.append(f"rank stability not computed: {reason(exc)}")
    intro += "<p>Also written as Markdown and LaTeX under <code>tables/</code> (<code>stats_*</code>).</p>"
    return Section("statistics", "Statistics", intro, children)
