"""The fixed names of tasks and metrics (docs/protocols.md), torch-free so analysis can use them.

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

# Evaluation protocols (docs/protocols.md): our pooled, corrected evaluation and the AdapMTL reference one.
PROTOCOLS: tuple[str, ...] = ("standard", "adapmtl")

# Angle metrics of surface normals, shared by both datasets (degrees and % of pixels).
_NORMAL_ANGLES: dict[str, int] = {
    "mean": LOWER,
    "median": LOWER,
    "within_11_25": HIGHER,
    "within_22_5": HIGHER,
    "within_30": HIGHER,
}

# Metrics per task under the `standard` protocol, per dataset, in reporting order.
METRICS: dict[str, dict[str, dict[str, int]]] = {
    "nyuv2": {
        "segment_semantic": {"miou": HIGHER, "pixel_acc": HIGHER},
        "normal": dict(_NORMAL_ANGLES),
        "depth_zbuffer": {
            "abs_err": LOWER,
            "rel_err": LOWER,
            "delta_1_25": HIGHER,
            "delta_1_25_2": HIGHER,
            "delta_1_25_3": HIGHER,
        },
    },
    # Tiny-Taskonomy: the reference's one metric per task comes first (err, cos_sim, abs_err, err, err),
    # then the extra pooled metrics that DiSparse's Table 3 prints (mIoU, pixel accuracy, angles, rel_err).
    # depth abs_err / rel_err are in log-normalised units log(1+d)/log(2^16).
    "taskonomy": {
        "segment_semantic": {"err": LOWER, "miou": HIGHER, "pixel_acc": HIGHER},
        "normal": {"cos_sim": HIGHER, **_NORMAL_ANGLES},
        "depth_zbuffer": {"abs_err": LOWER, "rel_err": LOWER},
        "keypoints2d": {"err": LOWER},
        "edge_texture": {"err": LOWER},
    },
}
# The metrics that enter ΔT / Δm, per dataset and task. NYU-v2: every metric (AdapMTL's Table 2 sums all
# twelve). Tiny-Taskonomy: the one metric per task that the AdapMTL reference scores Taskonomy with
# (seg err, normal cos_sim, depth abs_err, keypoint err, edge err); summing the five correlated angle
# metrics with cos_sim would give normals six votes.
DELTA_METRICS: dict[str, dict[str, tuple[str, ...]]] = {
    "nyuv2": {task: tuple(metrics) for task, metrics in METRICS["nyuv2"].items()},
    "taskonomy": {
        "segment_semantic": ("err",),
        "normal": ("cos_sim",),
        "depth_zbuffer": ("abs_err",),
        "keypoints2d": ("err",),
        "edge_texture": ("err",),
    },
}
# Kept for callers written before Taskonomy existed.
NYUV2_METRICS: dict[str, dict[str, int]] = METRICS["nyuv2"]


def _merge_directions() -> dict[str, int]:
    """One direction per column over all datasets; a column that two datasets disagree on is a bug."""
    merged: dict[str, int] = {}
    for dataset, tasks in METRICS.items():
        for task, metrics in tasks.items():
            for metric, sign in metrics.items():
                column = f"{task}.{metric}"
                if merged.setdefault(column, sign) != sign:
                    raise AssertionError(
                        f"column {column!r} has conflicting directions (again in {dataset!r})"
                    )
    return merged


DIRECTIONS: dict[str, int] = _merge_directions()

# The one metric per task that summary tables show first.
MAIN_METRIC: dict[str, str] = {
    "segment_semantic": "miou",
    "normal": "mean",
    "depth_zbuffer": "abs_err",
    "keypoints2d": "err",
    "edge_texture": "err",
}


def direction(column: str) -> int:
    """Direction (+1 higher-is-better, -1 lower-is-better) of a ``<task>.<metric>`` column of any dataset."""
    try:
        return DIRECTIONS[column]
    except KeyError:
        raise KeyError(f"unknown metric column {column!r}; known: {', '.join(sorted(DIRECTIONS))}") from None


def delta_metrics(dataset: str) -> dict[str, tuple[str, ...]]:
    """Task → the metric names that ΔT/Δm use for ``dataset``."""
    try:
        return DELTA_METRICS[dataset]
    except KeyError:
        raise KeyError(
            f"no ΔT metric set for dataset {dataset!r}; known: {', '.join(DELTA_METRICS)}"
        ) from None


def dataset_metrics(dataset: str) -> dict[str, dict[str, int]]:
    """The task → metric → direction table of one dataset, with a clear error for an unknown dataset."""
    try:
        return METRICS[dataset]
    except KeyError:
        raise KeyError(f"no metric vocabulary for dataset {dataset!r}; known: {', '.join(METRICS)}") from None
