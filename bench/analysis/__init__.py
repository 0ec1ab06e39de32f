"""Analysis from stored results alone (pandas/matplotlib; never imports torch or model code)."""

from bench.analysis.load import load_results
from bench.analysis.published import load_published
from bench.analysis.seeds import aggregate
from bench.analysis.summary import summary_table

__all__ = ["aggregate", "load_published", "load_results", "summary_table"]
