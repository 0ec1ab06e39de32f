"""Analysis from stored results alone (pandas/matplotlib; never imports torch or model code)."""

from bench.analysis.load import load_results
from bench.analysis.masks import (
    component_of,
    layer_sparsity,
    load_masks,
    load_task_masks,
    mask_overlap,
    overlap_matrix,
    task_iou,
)
from bench.analysis.published import load_published
from bench.analysis.seeds import aggregate
from bench.analysis.summary import summary_table

__all__ = [
    "aggregate",
    "component_of",
    "layer_sparsity",
    "load_masks",
    "load_published",
    "load_results",
    "load_task_masks",
    "mask_overlap",
    "overlap_matrix",
    "summary_table",
    "task_iou",
]
