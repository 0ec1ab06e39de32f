"""The metric vocabularies of the built-in datasets (torch-free: the analysis layer loads them without torch).

NYU-v2: every metric enters ΔT/Δm (AdapMTL's Table 2 sums all twelve). Tiny-Taskonomy: the reference's one
metric per task comes first (err, cos_sim, abs_err, err, err) and is the ΔT/Δm set (the metric the AdapMTL
reference scores Taskonomy with; summing the five correlated angle metrics with cos_sim would give normals six
votes), then the extra pooled metrics that DiSparse's Table 3 prints (mIoU, pixel accuracy, angles,
rel_err). Taskonomy depth abs_err / rel_err are in log-normalised units log(1+d)/log(2^16).

Display names and units (tables, figures): mIoU and pixel accuracy are stored as fractions and shown in %;
normal angles in degrees and the share of pixels within an angle in %; NYU-v2 depth errors in metres; the
δ accuracies in %. Taskonomy's errors are unitless (log-normalised depth, the reference's losses).
"""

from __future__ import annotations

from mtlprune.vocabulary import HIGHER, LOWER, MetricName, Vocabulary, register_vocabulary

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

TASK_NAMES = {
    "segment_semantic": "Seg",
    "normal": "Normal",
    "depth_zbuffer": "Depth",
    "keypoints2d": "Keypoint",
    "edge_texture": "Edge",
}
PERCENT_OF_FRACTION = {"unit": "%", "scale": 100.0}
NORMAL_NAMES = {
    "cos_sim": MetricName("CosSim"),
    "mean": MetricName("Mean", unit="°"),
    "median": MetricName("Median", unit="°"),
    "within_11_25": MetricName("11.25°", r"$11.25^\circ$", unit="%"),
    "within_22_5": MetricName("22.5°", r"$22.5^\circ$", unit="%"),
    "within_30": MetricName("30°", r"$30^\circ$", unit="%"),
}
SEGMENTATION_NAMES = {
    "err": MetricName("Err"),
    "miou": MetricName("mIoU", **PERCENT_OF_FRACTION),
    "pixel_acc": MetricName("PixAcc", **PERCENT_OF_FRACTION),
}
DEPTH_ACCURACY_NAMES = {
    "delta_1_25": MetricName("δ1.25", r"$\delta_{1.25}$", unit="%"),
    "delta_1_25_2": MetricName("δ1.25²", r"$\delta_{1.25^2}$", unit="%"),
    "delta_1_25_3": MetricName("δ1.25³", r"$\delta_{1.25^3}$", unit="%"),
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
        title="NYU-v2",
        task_names={task: TASK_NAMES[task] for task in _NYUV2_METRICS},
        names={
            "segment_semantic": {m: SEGMENTATION_NAMES[m] for m in _NYUV2_METRICS["segment_semantic"]},
            "normal": {m: NORMAL_NAMES[m] for m in _NYUV2_METRICS["normal"]},
            "depth_zbuffer": {
                "abs_err": MetricName("Abs err", unit="m"),
                "rel_err": MetricName("Rel err"),
                **DEPTH_ACCURACY_NAMES,
            },
        },
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
        title="Tiny-Taskonomy",
        task_names=TASK_NAMES,
        names={
            "segment_semantic": SEGMENTATION_NAMES,
            "normal": NORMAL_NAMES,
            "depth_zbuffer": {"abs_err": MetricName("Abs err"), "rel_err": MetricName("Rel err")},
            "keypoints2d": {"err": MetricName("Err")},
            "edge_texture": {"err": MetricName("Err")},
        },
    )
)
