"""One self-contained HTML page: figures embedded as base64 PNG, tables as HTML, inline CSS, no network.

The page must open from a mail attachment or a laptop without the store, so nothing is linked from outside
it (the PDF links next to each figure are relative and optional). Tables are rendered from the very
Markdown that :mod:`mtlprune.analysis.tables` writes (:func:`markdown_table_html`), so the page and the
``.md`` files can never disagree on a number, a bold best value or a footnote. A small inline script
checks after load that every image decoded and records it on ``<body>`` (``data-images-ok``,
``data-images-total``) for headless-browser tests.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = [
    "Figure",
    "Section",
    "frame_html",
    "key_value_html",
    "markdown_table_html",
    "pre_json",
    "render_page",
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 2rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
nav ul{columns:3;list-style:none;padding-left:0}
.counts span{display:inline-block;margin-right:1rem;padding:.1rem .5rem;border-radius:4px;background:#eee}
.counts .failed,.counts .damaged{background:#f8d7da}
.counts .missing,.counts .running,.counts .pending{background:#fff3cd}
.counts .done{background:#d4edda}
figure{margin:1rem 0;padding:.5rem;border:1px solid #eee}figure img{max-width:100%;height:auto}
figcaption{font-size:.9rem;color:#444}figcaption a{margin-left:.5rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #e5e5e5;padding:.2rem .5rem;text-align:right;vertical-align:top}
td:not(.l){white-space:nowrap}
th{background:#f6f6f6;position:sticky;top:0}
td.l,th.l{text-align:left}caption{caption-side:top;text-align:left;font-size:.85rem;color:#444;
padding:.3rem 0;max-width:1100px}
.scroll{overflow-x:auto}.notes{font-size:.8rem;color:#444}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem}
.error{color:#a00;font-family:monospace;white-space:pre-wrap}
.note{background:#fff3cd;padding:.3rem .6rem;border-radius:4px}
details summary{cursor:pointer}
"""

# Sets data-images-ok / data-images-total on <body> once every image has loaded (or failed).
SCRIPT = """
(function(){
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
    document.body.setAttribute('data-images-total',String(imgs.length));
    document.body.setAttribute('data-images-ok',String(ok));
    document.body.setAttribute('data-table-rows',String(document.querySelectorAll('table tbody tr').length));
    var page=document.documentElement.clientWidth;
    var over=Array.prototype.slice.call(document.querySelectorAll('table')).filter(function(t){
      var box=(t.closest('.scroll')||t).getBoundingClientRect();return box.left<-1||box.right>page+1;});
    document.body.setAttribute('data-tables-overflowing',String(over.length));
    document.body.setAttribute('data-page-overflow',String(Math.max(0,document.documentElement.scrollWidth-page)));
  }
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""


@dataclass
class Figure:
    """One embedded figure: its PNG bytes, a caption, and the files written beside the page."""

    name: str
    png: bytes
    caption: str
    files: Sequence[str] = ()

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        links = "".join(
            f'<a href="{html.escape(f)}">{html.escape(f.rsplit(".", 1)[-1].upper())}</a>' for f in self.files
        )
        return (
            f'<figure id="fig-{html.escape(self.name)}"><img alt="{html.escape(self.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(self.name)}</b>: '
            f"{html.escape(self.caption)}{links}</figcaption></figure>"
        )


@dataclass
class Section:
    """A titled part of the page; ``body`` is HTML (already escaped by whoever built it)."""

    id: str
    title: str
    body: str
    children: list[Section] = field(default_factory=list)


def _inline(text: str) -> str:
    """One Markdown cell as HTML: escaped, then **bold**, <u>underline</u>, footnote refs, \\| pipes."""
    out = html.escape(text.replace(r"\|", "|"), quote=False)
    out = re.sub(r"&lt;u&gt;(.*?)&lt;/u&gt;", r"<u>\1</u>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[\^(\d+)\]", r'<sup class="fn">\1</sup>', out)


def _split_row(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith(r"\|") else body
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", body)]


def markdown_table_html(markdown: str, table_id: str | None = None) -> str:
    """A GFM table as written by :func:`mtlprune.analysis.tables.to_markdown`, as HTML.

    ``Table: …`` becomes the caption, the header/alignment rows the ``<thead>`` (left-aligned columns get
    class ``l``), every further ``|`` row a body row; ``[^k]: …`` footnotes and any other text become
    notes below the table.
    """
    lines = markdown.splitlines()
    caption, rows, notes = "", [], []
    for line in lines:
        if line.startswith("Table:"):
            caption = line.removeprefix("Table:").strip()
        elif line.lstrip().startswith("|"):
            rows.append(_split_row(line))
        elif line.strip():
            notes.append(line.strip())
    if len(rows) < 2:
        raise ValueError("no Markdown table (a header row and an alignment row) in the text")
    header, align, body = rows[0], rows[1], rows[2:]
    left = [a.strip().startswith(":") and not a.strip().endswith(":") for a in align]

    def cls(i: int) -> str:
        return ' class="l"' if i < len(left) and left[i] else ""

    out = [f'<div class="scroll"><table{f" id={html.escape(table_id)!r}" if table_id else ""}>']
    if caption:
        out.append(f"<caption>{_inline(caption)}</caption>")
    out.append(
        "<thead><tr>"
        + "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(header))
        + "</tr></thead>"
    )
    out.append("<tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table></div>")
    if notes:
        items = []
        for note in notes:
            match = re.match(r"\[\^(\d+)\]:\s*(.*)", note)
            items.append(
                f"<li><sup>{match[1]}</sup> {_inline(match[2])}</li>"
                if match
                else f"<li>{_inline(note)}</li>"
            )
        out.append(f'<ul class="notes">{"".join(items)}</ul>')
    return "\n".join(out)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def frame_html(
    frame: pd.DataFrame, digits: int = 3, table_id: str | None = None, caption: str | None = None
) -> str:
    """A small DataFrame as an escaped HTML table (text columns left-aligned, floats to ``digits``)."""
    text_columns = {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}

    def cls(column: Any) -> str:
        return ' class="l"' if column in text_columns else ""

    out = [f'<div class="scroll"><table{f" id={html.escape(table_id)!r}" if table_id else ""}>']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append(
        "<thead><tr>"
        + "".join(f"<th{cls(c)}>{html.escape(str(c))}</th>" for c in frame.columns)
        + "</tr></thead><tbody>"
    )
    for row in frame.itertuples(index=False):
        cells = "".join(
            f"<td{cls(c)}>{html.escape(_cell(v, digits))}</td>"
            for c, v in zip(frame.columns, row, strict=True)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def pre_json(payload: Any) -> str:
    return f"<pre>{html.escape(json.dumps(payload, indent=2, sort_keys=True, default=str))}</pre>"


def key_value_html(items: Mapping[str, Any]) -> str:
    """A two-column table of key → value (values JSON-dumped when not plain text)."""
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append(
            f'<tr><th class="l">{html.escape(str(key))}</th><td class="l">{html.escape(text)}</td></tr>'
        )
    return f"<table><tbody>{''.join(rows)}</tbody></table>"


def _section_html(section: Section, level: int) -> str:
    parts = [
        f'<section id="{html.escape(section.id)}"><h{level}>{html.escape(section.title)}</h{level}>',
        section.body,
    ]
    parts += [_section_html(child, min(level + 1, 6)) for child in section.children]
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole page: title, ``header`` HTML (counts, store), a table of contents, then the sections."""
    toc = "".join(f'<li><a href="#{html.escape(s.id)}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(_section_html(s, 2) for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{header}\n<nav><ul>{toc}</ul></nav>\n{body}\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
