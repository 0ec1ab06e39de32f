"""The metric vocabularies of the built-in datasets (torch-free: the analysis layer loads them without torch).

NYU-v2: every metric enters ΔT/Δm (AdapMTL's Table 2 sums all twelve). Tiny-Taskonomy: the reference's one
metric per task comes first (err, cos_sim, abs_err, err, err) and is the ΔT/Δm set (the metric the AdapMTL
reference scores Taskonomy with; summing the five correlated angle metrics with cos_sim would give normals six
votes), then the extra pooled metrics that DiSparse's Table 3 prints (mIoU, pixel accuracy, angles,
rel_err). Taskonomy depth abs_err / rel_err are in log-normalised units log(1+d)/log(2^16).
"""

from __future__ import annotations

from mtlprune.vocabulary import HIGHER, LOWER, Vocabulary, register_vocabulary

# Angle metrics of surface normals, shared by both datasets (degrees and % of pixels).
NORMAL_ANGLES: dict[str, int] = {
    "mean": LOWER,
    "median": LOWER,
    "within_11_25": HIGHER,
    "within_22_5": HIGHER,
    "within_30": HIGHER,
}
MAIN = {
    "segment_semantic": "miou",
    "normal": "mean",
    "depth_zbuffer": "abs_err",
    "keypoints2d": "err",
    "edge_texture": "err",
}

_NYUV2_METRICS = {
    "segment_semantic": {"miou": HIGHER, "pixel_acc": HIGHER},
    "normal": dict(NORMAL_ANGLES),
    "depth_zbuffer": {
        "abs_err": LOWER,
        "rel_err": LOWER,
        "delta_1_25": HIGHER,
        "delta_1_25_2": HIGHER,
        "delta_1_25_3": HIGHER,
    },
}
NYUV2 = register_vocabulary(
    Vocabulary(
        dataset="nyuv2",
        metrics=_NYUV2_METRICS,
        delta={task: tuple(metrics) for task, metrics in _NYUV2_METRICS.items()},
        main={task: MAIN[task] for task in _NYUV2_METRICS},
    )
)
TASKONOMY = register_vocabulary(
    Vocabulary(
        dataset="taskonomy",
        metrics={
            "segment_semantic": {"err": LOWER, "miou": HIGHER, "pixel_acc": HIGHER},
            "normal": {"cos_sim": HIGHER, **NORMAL_ANGLES},
            "depth_zbuffer": {"abs_err": LOWER, "rel_err": LOWER},
            "keypoints2d": {"err": LOWER},
            "edge_texture": {"err": LOWER},
        },
        delta={
            "segment_semantic": ("err",),
            "normal": ("cos_sim",),
            "depth_zbuffer": ("abs_err",),
            "keypoints2d": ("err",),
            "edge_texture": ("err",),
        },
        main=MAIN,
    )
)
