"""Golden tests for ΔT (AdapMTL, sum per task) and Δm (Maninis et al., mean per task)."""

from __future__ import annotations

import pytest

from mtlprune.analysis.delta import delta_m, delta_t

SEG = "segment_semantic"
DEPTH = "depth_zbuffer"

DENSE = {
    f"{SEG}.miou": 0.25,
    f"{SEG}.pixel_acc": 0.50,
    f"{DEPTH}.abs_err": 0.40,
    f"{DEPTH}.rel_err": 0.25,
}
PRUNED = {
    f"{SEG}.miou": 0.30,
    f"{SEG}.pixel_acc": 0.60,
    f"{DEPTH}.abs_err": 0.50,
    f"{DEPTH}.rel_err": 0.20,
}
# seg:   ΔT_seg = 100·(0.05/0.25 + 0.10/0.50) = 100·(0.2 + 0.2) = 40;   Δm_seg = 40/2 = 20
# depth (lower is better, signs flip):
#        abs_err: −100·(0.50−0.40)/0.40 = −25;  rel_err: −100·(0.20−0.25)/0.25 = +20
#        ΔT_depth = −25 + 20 = −5;   Δm_depth = −5/2 = −2.5
# ΔT = (40 − 5)/2 = 17.5;   Δm = (20 − 2.5)/2 = 8.75


def test_delta_t_golden() -> None:
    out = delta_t(PRUNED, DENSE, [SEG])
    assert out == {"delta_t": pytest.approx(40.0), f"delta_t.{SEG}": pytest.approx(40.0)}


def test_lower_is_better_flips_sign() -> None:
    out = delta_t(PRUNED, DENSE, [DEPTH])
    assert out[f"delta_t.{DEPTH}"] == pytest.approx(-5.0)
    # Only abs_err present: worse error -> negative.
    only_abs = {f"{DEPTH}.abs_err": 0.40}
    assert delta_t(PRUNED, only_abs, [DEPTH])["delta_t"] == pytest.approx(-25.0)


def test_two_tasks_and_delta_m_differs() -> None:
    out = delta_t(PRUNED, DENSE, [SEG, DEPTH])
    assert list(out) == ["delta_t", f"delta_t.{SEG}", f"delta_t.{DEPTH}"]
    assert out["delta_t"] == pytest.approx(17.5)
    assert delta_m(PRUNED, DENSE, [SEG, DEPTH]) == pytest.approx(8.75)
    # With k metrics per task, ΔT_t = k·Δm_t.
    assert delta_m(PRUNED, DENSE, [SEG]) == pytest.approx(20.0)


def test_dense_against_itself_is_zero() -> None:
    assert delta_t(DENSE, DENSE, [SEG, DEPTH])["delta_t"] == 0.0
    assert delta_m(DENSE, DENSE, [SEG, DEPTH]) == 0.0


def test_unrelated_keys_are_ignored() -> None:
    # Keys outside the task's NYU-v2 metric set (costs, Taskonomy's seg err, other tasks) do not count.
    dense = {**DENSE, f"{SEG}.err": 1.0, "sparsity": 0.5, "normal.mean": 20.0}
    pruned = {**PRUNED, f"{SEG}.err": 9.0, "sparsity": 0.9, "normal.mean": 10.0}
    assert delta_t(pruned, dense, [SEG])["delta_t"] == pytest.approx(40.0)
    # A metric of the model that the dense reference lacks is not counted either.
    assert delta_t(pruned, {f"{SEG}.miou": 0.25}, [SEG])["delta_t"] == pytest.approx(20.0)


def test_errors_name_the_column() -> None:
    missing = {k: v for k, v in PRUNED.items() if k != f"{SEG}.pixel_acc"}
    with pytest.raises(KeyError, match=r"segment_semantic\.pixel_acc"):
        delta_t(missing, DENSE, [SEG])
    with pytest.raises(KeyError, match=r"segment_semantic\.pixel_acc"):
        delta_m(missing, DENSE, [SEG])
    with pytest.raises(ValueError, match=r"depth_zbuffer\.rel_err"):
        delta_t(PRUNED, {**DENSE, f"{DEPTH}.rel_err": 0.0}, [DEPTH])
    with pytest.raises(KeyError, match="keypoints2d"):
        delta_t(PRUNED, DENSE, ["keypoints2d"])
    with pytest.raises(ValueError, match="no metric of task 'normal'"):
        delta_t(PRUNED, DENSE, ["normal"])
    with pytest.raises(ValueError, match="empty"):
        delta_t(PRUNED, DENSE, [])
    with pytest.raises(ValueError, match="more than once"):
        delta_t(PRUNED, DENSE, [SEG, SEG])
    with pytest.raises(TypeError):
        delta_t(PRUNED, DENSE, SEG)


# AdapMTL Table 2 (NYU-v2, MobileNetV2, ~90 % sparsity), metrics as printed (2 decimals, %), and the
# published ΔT1 (seg), ΔT2 (normal), ΔT3 (depth), ΔT. Source: the paper (arXiv 2408.03913), Table 2, as
# transcribed in results/published/adapmtl_table2.csv.
COLS = [
    f"{SEG}.miou",
    f"{SEG}.pixel_acc",
    "normal.mean",
    "normal.median",
    "normal.within_11_25",
    "normal.within_22_5",
    "normal.within_30",
    f"{DEPTH}.abs_err",
    f"{DEPTH}.rel_err",
    f"{DEPTH}.delta_1_25",
    f"{DEPTH}.delta_1_25_2",
    f"{DEPTH}.delta_1_25_3",
]
TABLE2_DENSE = [19.94, 48.71, 17.85, 16.21, 29.77, 72.19, 86.19, 0.64, 0.24, 58.93, 86.27, 96.16]
TABLE2 = {
    "SNIP": ([18.96, 46.93, 18.33, 16.97, 28.93, 71.21, 85.78, 0.64, 0.25, 56.75, 85.71, 95.33],
             (-8.57, -12.03, -9.38, -9.99)),
    "LTH": ([19.14, 47.25, 17.67, 16.32, 29.67, 72.15, 86.22, 0.65, 0.25, 57.68, 85.89, 96.13],
            (-7.01, -0.03, -8.32, -5.12)),
    "IMP": ([18.76, 48.12, 18.71, 16.68, 29.63, 71.76, 85.91, 0.64, 0.23, 59.75, 86.52, 96.31],
            (-7.13, -9.11, 6.00, -3.41)),
    "DiSparse": ([19.87, 48.83, 17.92, 16.79, 29.87, 71.76, 85.64, 0.65, 0.24, 58.42, 85.72, 96.28],
                 (-0.10, -4.87, -2.94, -2.64)),
    "AdapMTL": ([20.16, 49.14, 17.53, 15.96, 30.16, 72.36, 86.51, 0.64, 0.24, 59.03, 86.57, 96.38],
                (1.99, 5.25, 0.75, 2.66)),
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(TABLE2))
def test_reproduces_adapmtl_table2(method: str) -> None:
    values, published = TABLE2[method]
    out = delta_t(dict(zip(COLS, values, strict=True)), dict(zip(COLS, TABLE2_DENSE, strict=True)),
                  [SEG, "normal", DEPTH])  # fmt: skip
    got = (out[f"delta_t.{SEG}"], out["delta_t.normal"], out[f"delta_t.{DEPTH}"], out["delta_t"])
    # Published cells are rounded to 2 decimals: agreement to ±0.005.
    assert got == pytest.approx(published, abs=0.005)
