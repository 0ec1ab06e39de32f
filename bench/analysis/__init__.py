"""Analysis from stored results alone (pandas/matplotlib; never imports torch or model code)."""

from mtlprune.analysis.curves import load_log, read_log
from mtlprune.analysis.dense_results import dense_vs_trivial, load_dense
from mtlprune.analysis.load import load_results
from mtlprune.analysis.masks import (
    component_of,
    layer_sparsity,
    load_masks,
    load_task_masks,
    mask_overlap,
    overlap_matrix,
    task_iou,
)
from mtlprune.analysis.published import load_published
from mtlprune.analysis.run_summary import summary_table
from mtlprune.analysis.seeds import aggregate
from mtlprune.analysis.stats import (
    CONTROL_METHOD,
    FriedmanResult,
    RankStability,
    average_ranks,
    block_values,
    friedman_test,
    holm,
    max_seeds_per_cell,
    nemenyi_cd,
    nemenyi_q,
    paired_differences,
    pairwise_tests,
    rank_stability,
    seed_intervals,
)
from mtlprune.analysis.summaries import bootstrap_ci, delta_t_auc, pareto_dominated, with_bootstrap
from mtlprune.analysis.tables import (
    comparison_table,
    table2_latex,
    table2_layout,
    table2_markdown,
    to_latex,
    to_markdown,
)

__all__ = [
    "CONTROL_METHOD",
    "FriedmanResult",
    "RankStability",
    "aggregate",
    "average_ranks",
    "block_values",
    "bootstrap_ci",
    "comparison_table",
    "component_of",
    "delta_t_auc",
    "dense_vs_trivial",
    "friedman_test",
    "holm",
    "layer_sparsity",
    "load_dense",
    "load_log",
    "load_masks",
    "load_published",
    "load_results",
    "load_task_masks",
    "mask_overlap",
    "max_seeds_per_cell",
    "nemenyi_cd",
    "nemenyi_q",
    "overlap_matrix",
    "paired_differences",
    "pairwise_tests",
    "pareto_dominated",
    "rank_stability",
    "read_log",
    "seed_intervals",
    "summary_table",
    "table2_latex",
    "table2_layout",
    "table2_markdown",
    "task_iou",
    "to_latex",
    "to_markdown",
    "with_bootstrap",
]
