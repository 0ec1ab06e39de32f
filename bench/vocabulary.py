"""The fixed names of tasks and metrics (DESIGN "Metric vocabulary"), torch-free so analysis can use them.

Every metric column is ``<task>.<metric>``; its direction is +1 when higher is better and -1 when lower is
better. ΔT/Δm and every table read directions from here and nowhere else.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = (
    "segment_semantic",
    "normal",
    "depth_zbuffer",
    "keypoints2d",
    "edge_texture",
)

HIGHER = 1
LOWER = -1

# Metrics per task under the NYU-v2 `standard` protocol, in reporting order.
NYUV2_METRICS: dict[str, dict[str, int]] = {
    "segment_semantic": {"miou": HIGHER, "pixel_acc": HIGHER},
    "normal": {
        "mean": LOWER,
        "median": LOWER,
        "within_11_25": HIGHER,
        "within_22_5": HIGHER,
        "within_30": HIGHER,
    },
    "depth_zbuffer": {
        "abs_err": LOWER,
        "rel_err": LOWER,
        "delta_1_25": HIGHER,
        "delta_1_25_2": HIGHER,
        "delta_1_25_3": HIGHER,
    },
}

# The one metric per task that summary tables show first.
MAIN_METRIC: dict[str, str] = {
    "segment_semantic": "miou",
    "normal": "mean",
    "depth_zbuffer": "abs_err",
    "keypoints2d": "err",
    "edge_texture": "err",
}


def direction(column: str) -> int:
    """Direction (+1 higher-is-better, -1 lower-is-better) of a ``<task>.<metric>`` column."""
    task, _, metric = column.partition(".")
    try:
        return NYUV2_METRICS[task][metric]
    except KeyError:
        known = sorted(f"{t}.{m}" for t, ms in NYUV2_METRICS.items() for m in ms)
        raise KeyError(f"unknown metric column {column!r}; known: {', '.join(known)}") from None
