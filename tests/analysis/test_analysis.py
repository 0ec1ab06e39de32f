"""load_results and the summary on a hand-written store: golden ΔT values, statuses, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtlprune.analysis import load_results, summary_table
from mtlprune.analysis.figures import delta_t_vs_sparsity
from mtlprune.store.records import StageResult
from tests.fake_store import cell_result, dense_result

TASKS = ["segment_semantic", "normal"]
DENSE = {
    "segment_semantic.miou": 0.25, "segment_semantic.pixel_acc": 0.50,
    "normal.mean": 20.0, "normal.median": 16.0, "normal.within_11_25": 30.0, "normal.within_22_5": 60.0,
    "normal.within_30": 80.0,
}  # fmt: skip


def _spec(run_id: str, method: str, target: float, seed: int = 0) -> dict:
    return {
        "run_id": run_id,
        "dense_run_id": "dense0",
        "spec": {
            "stage": "cell",
            "data": {"dataset": "nyuv2", "tasks": TASKS},
            "arch": {"name": "deeplab_resnet34", "width": 0.25, "head_width": 0.0625},
            "method": {"name": method, "params": {}},
            "target_sparsity": target,
            "seed": seed,
            "eval": {"protocol": "standard"},
        },
    }


def _write(
    store: Path, run_id: str, spec: dict | None, result: StageResult | None, status: dict | None = None
) -> None:
    run = store / "runs" / run_id
    run.mkdir(parents=True)
    if spec is not None:
        (run / "spec.json").write_text(json.dumps(spec))
    if result is not None:
        (run / "result.json").write_text(json.dumps(result.payload()))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    _write(
        tmp_path, "dense0", {"run_id": "dense0", "spec": {"stage": "dense"}}, dense_result("dense0", DENSE)
    )
    better = dict(
        DENSE, **{"segment_semantic.miou": 0.30, "segment_semantic.pixel_acc": 0.60, "normal.mean": 18.0}
    )
    for run_id, method, target, metrics in (("c1", "magnitude", 0.9, better), ("c2", "random", 0.9, DENSE)):
        sparsity = {"achieved_sparsity": target, "sparsity.backbone": 0.8}
        result = cell_result(run_id, "dense0", metrics, sparsity=sparsity, steps_total=400, wall_s=12.5)
        _write(tmp_path, run_id, _spec(run_id, method, target), result, {"status": "done"})
    _write(
        tmp_path, "c3", _spec("c3", "random", 0.5), None, {"status": "failed", "error": "RuntimeError: boom"}
    )
    _write(tmp_path, "c4", _spec("c4", "magnitude", 0.5), None)
    return tmp_path


def test_golden_delta_t_and_delta_m(store):
    frame = load_results(store).set_index("run_id")
    c1 = frame.loc["c1"]
    # seg: 100·(0.05/0.25 + 0.10/0.50) = 40; normal: only the mean moved, lower is better: 100·(2/20) = 10
    assert c1["delta_t.segment_semantic"] == pytest.approx(40.0)
    assert c1["delta_t.normal"] == pytest.approx(10.0)
    assert c1["delta_t"] == pytest.approx(25.0)
    # Δm: seg mean 40/2 = 20; normal mean over 5 metrics 10/5 = 2; mean over tasks 11
    assert c1["delta_m"] == pytest.approx(11.0)
    assert frame.loc["c2", "delta_t"] == 0.0
    assert c1["sparsity.backbone"] == 0.8 and c1["steps_total"] == 400


def test_statuses_and_failed_rows_keep_their_error(store):
    frame = load_results(store).set_index("run_id")
    assert frame["status"].to_dict() == {"c1": "done", "c2": "done", "c3": "failed", "c4": "pending"}
    assert frame.loc["c3", "error"] == "RuntimeError: boom"
    assert frame.loc[["c3", "c4"], "delta_t"].isna().all()
    assert "dense0" not in frame.index  # dense stages are references, not rows


def test_summary_table_means_over_seeds(store, tmp_path):
    table = summary_table(load_results(store))
    assert list(table["method"]) == ["magnitude", "random"]
    row = table.set_index("method").loc["magnitude"]
    assert row["delta_t"] == pytest.approx(25.0) and row["segment_semantic.miou"] == pytest.approx(0.30)
    assert row["seeds"] == 1


def test_figure_is_written_as_png_and_pdf(store, tmp_path):
    paths = delta_t_vs_sparsity(load_results(store), tmp_path / "fig" / "dt")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"


def test_analysis_never_imports_torch(store):
    code = (
        "import sys; from mtlprune.analysis import load_results; "
        f"load_results({str(store)!r}); assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
