"""Reports from stored results: the end-of-run summary of `mtlprune run`, and `mtlprune report`'s full report.

`mtlprune report` works from the store alone and never imports torch (nor the method plugins, which do):
given a config it reads only the YAML ``name`` key and then the matrix's manifest
(``<store>/<name>/matrix.json``, see :mod:`mtlprune.store.manifest`), so cells that were planned but never
started are listed as missing; given a store folder it reports every run in it (and the cells that any
manifest in it lists without a run). Output, under ``--out`` (default ``<store>/<name>/report`` or
``<store>/report``):

- ``figures/*.pdf|png``: metrics and ΔT/Δm vs sparsity, per-component allocation, training curves, mask
  analytics where masks are stored;
- ``tables/*.md|tex``: the comparison of all cells and AdapMTL's Table 2 layout per setting and target;
- statistics over seeds (:mod:`mtlprune.analysis.stats`): ΔT intervals, average ranks with the Friedman test
  and a critical-difference diagram, Holm-adjusted pairwise tests; with one seed per cell, only the
  statement that no significance statement is possible;
- ``report.html``: one self-contained page with all of it, the failed and missing cells with their errors,
  the matrix spec and the provenance of the runs.

A figure or table that cannot be drawn (no finished cell of a setting, no masks) is skipped with the
reason written into the page; failed, running and missing cells are never dropped silently.
"""

from mtlprune.analysis.report.attention import collapse_lines
from mtlprune.analysis.report.builder import ReportOutcome
from mtlprune.analysis.report.collect import collect, matrix_name, resolve_source
from mtlprune.analysis.report.end_of_run import write_run_report
from mtlprune.analysis.report.page import build_report

__all__ = [
    "ReportOutcome",
    "build_report",
    "collapse_lines",
    "collect",
    "matrix_name",
    "resolve_source",
    "write_run_report",
]
