"""`build_report`: the whole report, figures, tables, statistics and ``report.html`` with the spec and
provenance of the runs."""

from __future__ import annotations

import html
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlprune.analysis.report.attention import attention_section
from mtlprune.analysis.report.builder import Builder, ReportOutcome, slug
from mtlprune.analysis.report.collect import ReportData, collect, resolve_source
from mtlprune.analysis.report.figure_sections import figure_sections
from mtlprune.analysis.report.stats_section import statistics_section
from mtlprune.analysis.report.table_sections import headroom_tables, summary_tables, table_sections
from mtlprune.spec.select import Selection
from mtlprune.store import Store, atomic_write_bytes
from mtlprune.store.integrity import DAMAGED

if TYPE_CHECKING:
    from mtlprune.analysis.html import Section

REPORT_HTML = "report.html"


def run_provenance(data: ReportData) -> dict[str, Any]:
    """What the runs' result.json files say about where and with what they ran, summarised."""
    commits: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    starts, ends, wall = [], [], 0.0
    store = Store(data.store)
    run_ids = [
        *data.frame.loc[data.frame["status"] == "done", "run_id"],
        *data.dense.loc[data.dense["status"] == "done", "run_id"],
    ]
    for run_id in run_ids:
        if not store.is_done(str(run_id)):
            continue
        result = store.result(str(run_id))
        prov = result.provenance
        wall += result.wall_s
        devices[str(prov.get("device") or result.device or "unknown")] += 1
        if prov:
            dirty = {True: " (dirty tree)", False: "", None: ""}.get(prov.get("dirty"), "")
            commits[f"{prov.get('commit') or 'unknown'}{dirty}"] += 1
            hosts[str(prov.get("hostname") or "unknown")] += 1
            if prov.get("packages"):
                packages[", ".join(f"{k} {v}" for k, v in sorted(prov["packages"].items()) if v)] += 1
            if prov.get("start"):
                starts.append(str(prov["start"]))
            if prov.get("end"):
                ends.append(str(prov["end"]))
    out: dict[str, Any] = {"stages with a result": len(run_ids), "total wall time (h)": f"{wall / 3600:.2f}"}
    for label, counter in (
        ("device", devices),
        ("git commit", commits),
        ("host", hosts),
        ("packages", packages),
    ):
        if counter:
            out[label] = "; ".join(f"{k}: {n} stage(s)" for k, n in counter.most_common())
    if starts:
        out["first start (UTC)"] = min(starts)
    if ends:
        out["last end (UTC)"] = max(ends)
    if not commits:
        out["note"] = "the results record no provenance (written before provenance was stored)"
    return out


MAIN_TABLE = "comparison"  # table_sections' first table: the main metric of each task, ΔT, sparsity
MAIN_FIGURE = "delta_"  # the ΔT/Δm-vs-sparsity figure of each dataset


def _main_comparison(tables: dict[str, str], builder: Builder) -> Section:
    """The page's first section: the comparison table of the main metrics and the ΔT figures, taken out of
    the Tables and Figures sections (each appears once on the page)."""
    from mtlprune.analysis.html import Section

    body = []
    first = next(iter(tables), None)
    if first is not None and f"id='{MAIN_TABLE}'" in tables[first]:
        body.append(f"<h3>{html.escape(first)}</h3>" + tables.pop(first))
    for group, figures in builder.embedded.items():
        main = [f for f in figures if f.name.startswith(MAIN_FIGURE)]
        builder.embedded[group] = [f for f in figures if not f.name.startswith(MAIN_FIGURE)]
        body += [f.html() for f in main]
    builder.embedded = {g: figs for g, figs in builder.embedded.items() if figs}
    if not body:
        body.append("<p>No comparison could be drawn; see Cells without a result and Left out.</p>")
    return Section("main", "Main comparison", "\n".join(body))


def build_report(
    source: str | Path,
    store: str | Path | None = None,
    out: str | Path | None = None,
    style: str = "paper",
    only: Selection | list[str] | None = None,
) -> ReportOutcome:
    """Figures, tables and ``report.html`` for a config (via its manifest) or a whole store folder;
    ``only`` (``--only`` clauses) reports the selected cells, by default into ``report-<selection>``."""
    from mtlprune.analysis.html import Section, key_value_html, pre_json, render_page
    from mtlprune.analysis.style import figure_style

    figure_style(style)  # an unknown style fails before any work
    if not isinstance(only, Selection):
        only = Selection.parse(only)
    only.check_record_keys()
    root, manifests, name = resolve_source(source, store)
    data = collect(root, manifests, name, only)
    folder = "report" + (f"-{re.sub(r'[^A-Za-z0-9._=-]+', '_', only.describe())}" if only else "")
    out_dir = Path(out) if out is not None else (root / name / folder if name else root / folder)
    builder = Builder(out_dir, style)
    builder.notes += data.notes
    figure_sections(data, builder)
    tables = table_sections(data, builder)
    summaries = {
        **headroom_tables(data.dense, data.frame, builder.notes),
        **summary_tables(data.frame, builder.notes),
    }
    counts = dict(Counter(str(s) for s in data.frame["status"]).most_common())

    sections = [_main_comparison(tables, builder)]
    sections.append(Section("attention", "Cells without a result", attention_section(data)))
    figure_parts = [
        Section(slug("fig", group), group, "\n".join(f.html() for f in figs))
        for group, figs in builder.embedded.items()
    ]
    no_figure = "" if figure_parts else "<p>No figure could be drawn; see Left out.</p>"
    sections.append(Section("figures", "Figures", no_figure, figure_parts))
    table_parts = [Section(slug("table", i), title, body) for i, (title, body) in enumerate(tables.items())]
    sections.append(
        Section(
            "tables",
            "Tables",
            "<p>Also written as Markdown and LaTeX under <code>tables/</code>.</p>",
            table_parts,
        )
    )
    sections.append(statistics_section(data, builder))
    if summaries:
        sections.append(
            Section(
                "summaries",
                "Summaries",
                "",
                [Section(slug("summary", i), t, b) for i, (t, b) in enumerate(summaries.items())],
            )
        )
    spec_body = (
        "".join(
            f"<h3>{html.escape(m.name)}</h3><p><code>{html.escape(str(m.path))}</code></p>{pre_json(m.spec)}"
            for m in manifests
        )
        or "<p>No matrix manifest in this store: every run in it is reported.</p>"
    )
    sections.append(Section("spec", "Matrix spec", spec_body))
    prov_body = "<h3>Runs</h3>" + key_value_html(run_provenance(data))
    for m in manifests:
        if m.provenance:
            prov_body += f"<h3>Planned ({html.escape(m.name)})</h3>" + key_value_html(m.provenance)
    sections.append(Section("provenance", "Provenance", prov_body))
    if builder.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in builder.notes)
        sections.append(Section("notes", "Left out", f'<ul class="note">{items}</ul>'))

    count_html = "".join(
        f'<span class="{html.escape(s)}">{n} {html.escape(s)}</span>' for s, n in counts.items()
    )
    header = (
        f"<p>Store <code>{html.escape(str(root))}</code> · {len(data.frame)} cells · generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · figure style {html.escape(style)}</p>"
        f'<p class="counts">{count_html}</p>'
    )
    page = render_page(data.title, header, sections)
    html_path = out_dir / REPORT_HTML
    atomic_write_bytes(html_path, page.encode("utf-8"))
    damaged = [
        f"{row.run_id}: {row.error}"
        for frame in (data.frame, data.dense)
        if not frame.empty
        for row in frame[frame["status"] == DAMAGED].itertuples(index=False)
    ]
    return ReportOutcome(out_dir, html_path, builder.figures, builder.tables, counts, builder.notes, damaged)
