"""Display names from one vocabulary: figures' axis labels and tables' headers read the same names."""

from __future__ import annotations

import pytest

from mtlprune.analysis.labels import arch_title, column_label, column_name, column_scale, setting_title
from mtlprune.vocabulary import MetricName, Vocabulary, metric_name, register_vocabulary, task_name


@pytest.mark.parametrize(
    ("column", "dataset", "text"),
    [
        ("segment_semantic.miou", "nyuv2", "Seg mIoU (%) ↑"),
        ("normal.mean", "nyuv2", "Normal Mean (°) ↓"),
        ("normal.within_11_25", "nyuv2", "Normal 11.25° (%) ↑"),
        ("depth_zbuffer.abs_err", "nyuv2", "Depth Abs err (m) ↓"),
        ("depth_zbuffer.abs_err", "taskonomy", "Depth Abs err ↓"),  # log-normalised: no unit
        ("keypoints2d.err", "taskonomy", "Keypoint Err ↓"),
        ("delta_t", None, "ΔT (%) ↑"),
        ("delta_t.normal", None, "ΔT Normal (%) ↑"),
        ("delta_t_control", None, "ΔT vs control (%) ↑"),
        ("achieved_sparsity", None, "Sparsity (%)"),
        ("sparsity.head.depth_zbuffer", None, "Sp. Depth head (%)"),
        ("params_kept", None, "params_kept"),
    ],
)
def test_column_labels(column, dataset, text):
    assert column_label(column, dataset) == text


def test_latex_labels_scales_and_settings():
    assert column_label("normal.within_22_5", "nyuv2", latex=True) == r"Normal $22.5^\circ$ (\%) $\uparrow$"
    assert column_label("depth_zbuffer.delta_1_25_2", "nyuv2", unit=False, latex=True) == (
        r"Depth $\delta_{1.25^2}$ $\uparrow$"
    )
    assert column_label("sparsity.backbone", arrow=False, unit=False, latex=True) == "Sp. backbone"
    assert column_scale("segment_semantic.miou") == column_scale("achieved_sparsity") == 100.0
    assert column_scale("normal.within_30") == 1.0  # stored in % already
    assert column_name("normal.mean").direction == -1 and column_name("achieved_sparsity").direction is None
    assert setting_title("taskonomy", "deeplab_resnet34") == "Tiny-Taskonomy · Deeplab-ResNet34"
    assert arch_title("my_vit") == "my_vit"


def test_a_dataset_without_display_names_falls_back_to_its_code_names():
    register_vocabulary(Vocabulary("labels-toy", {"glow": {"l1": -1}}, {"glow": ("l1",)}, {"glow": "l1"}))
    assert column_label("glow.l1", "labels-toy") == "glow l1 ↓"
    assert task_name("glow") == "glow" and metric_name("glow.l1") == MetricName("l1")
    # A column another dataset names keeps that name and unit: one column means one thing everywhere.
    register_vocabulary(
        Vocabulary(
            "labels-toy-2",
            {"segment_semantic": {"miou": 1}},
            {"segment_semantic": ("miou",)},
            {"segment_semantic": "miou"},
        )
    )
    assert column_label("segment_semantic.miou", "labels-toy-2") == "Seg mIoU (%) ↑"


def test_display_names_are_checked_on_registration():
    metrics, delta, main = {"glow": {"l1": -1}}, {"glow": ("l1",)}, {"glow": "l1"}
    with pytest.raises(ValueError, match=r"display names for metrics \['l2'\] that 'glow' does not have"):
        Vocabulary("bad", metrics, delta, main, names={"glow": {"l2": MetricName("L2")}})
    with pytest.raises(ValueError, match="name of glow.l1 must be a MetricName with a positive scale"):
        Vocabulary("bad", metrics, delta, main, names={"glow": {"l1": MetricName("L1", scale=0.0)}})
    with pytest.raises(ValueError, match="task 'segment_semantic' is shown as 'Sem', another dataset"):
        register_vocabulary(
            Vocabulary(
                "bad",
                {"segment_semantic": {"miou": 1}},
                {"segment_semantic": ("miou",)},
                {"segment_semantic": "miou"},
                task_names={"segment_semantic": "Sem"},
            )
        )


def test_display_frame_renames_and_scales_summary_columns():
    import pandas as pd

    from mtlprune.analysis.labels import display_frame

    frame = pd.DataFrame(
        {
            "dataset": ["nyuv2"],
            "arch": ["mobilenetv2"],
            "method": ["snip"],
            "sparsity_min": [0.5],
            "auc_normalised": [-3.25],
            "segment_semantic.miou.mean": [0.2],
            "depth_zbuffer.abs_err.mean": [0.61],
            "dominated": [True],
        }
    )
    shown = display_frame(frame, "nyuv2")
    assert list(shown.columns) == [
        "Dataset", "Arch", "Method", "Sparsity from (%)", "Mean ΔT over the range (%)",
        "Seg mIoU (%) ↑", "Depth Abs err (m) ↓", "Dominated",
    ]  # fmt: skip
    assert shown.iloc[0].tolist() == ["NYU-v2", "MobileNetV2", "snip", 50.0, -3.25, 20.0, 0.61, True]
    trivial = pd.DataFrame({"metric": ["segment_semantic.miou", "normal.mean"], "dense": [0.3, 18.0]})
    assert display_frame(trivial).to_dict("list") == {
        "Metric": ["Seg mIoU (%) ↑", "Normal Mean (°) ↓"],
        "Dense": [30.0, 18.0],
    }
