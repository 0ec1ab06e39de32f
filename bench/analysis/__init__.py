"""Analysis from stored results alone (pandas/matplotlib; never imports torch or model code)."""

from bench.analysis.load import load_results
from bench.analysis.summary import summary_table

__all__ = ["load_results", "summary_table"]
