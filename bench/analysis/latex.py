"""The one LaTeX escape of the analysis layer: text from results and captions made safe for pdflatex.

Every table and caption that goes into a ``.tex`` file passes through :func:`latex_escape`, so the output is
compiles with the standard packages (booktabs, graphicx) alone: TeX's special characters are escaped and the
Greek letters and symbols our names use become math, so generated text is plain ASCII. Other non-ASCII text
(an accented letter in a caller's caption or a plugin's name) is left to LaTeX's UTF-8 input.
"""

from __future__ import annotations

__all__ = ["FLOATS", "LATEX_SPECIALS", "UNICODE_LATEX", "latex_escape", "latex_table"]

LATEX_SPECIALS: dict[str, str] = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# Characters our names and captions carry that pdflatex cannot typeset as text.
UNICODE_LATEX: dict[str, str] = {
    "Δ": r"$\Delta$",
    "δ": r"$\delta$",
    "α": r"$\alpha$",
    "χ": r"$\chi$",
    "τ": r"$\tau$",
    "σ": r"$\sigma$",
    "μ": r"$\mu$",
    "²": r"$^2$",
    "³": r"$^3$",
    "°": r"$^\circ$",
    "±": r"$\pm$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "≈": r"$\approx$",
    "−": "$-$",
    "–": "--",
    "—": "---",
    "→": r"$\rightarrow$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "…": r"\ldots{}",
    "’": "'",
    "“": "``",
    "”": "''",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that typesets as the text: specials escaped, our symbols as math."""
    return "".join(LATEX_SPECIALS.get(ch) or UNICODE_LATEX.get(ch) or ch for ch in str(text))


FLOATS: tuple[str, ...] = ("table", "table*")


def latex_table(
    tabular: list[str],
    short: str,
    legend: str = "",
    label: str | None = None,
    *,
    env: str = "table",
    resize: bool = True,
) -> str:
    """A float around a ``tabular`` (its lines, LaTeX source): caption above, then the label.

    ``short`` and ``legend`` are LaTeX source (escaped by the caller). With a legend the caption is
    ``\\caption[short]{short legend}``, so a list of tables shows the short one. ``env``: ``table`` (one
    column) or ``table*`` (across both columns of a two-column paper). ``resize`` shrinks the tabular to the
    line width when it is wider (never enlarges it; needs ``\\usepackage{graphicx}``).
    """
    if env not in FLOATS:
        raise ValueError(f"env must be one of {', '.join(FLOATS)}, got {env!r}")
    caption = rf"\caption[{{{short}}}]{{{short} {legend}}}" if legend else rf"\caption{{{short}}}"
    lines = [rf"\begin{{{env}}}[t]", r"\centering", caption]
    if label:
        lines.append(rf"\label{{{label}}}")
    if resize:
        lines += [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]
    else:
        lines += tabular
    lines.append(rf"\end{{{env}}}")
    return "\n".join(lines) + "\n"
