"""Typed store records: round trips, older files, newer formats and damaged files named in the error."""

from __future__ import annotations

import json
import re

import pytest

from mtlprune.store import RESULT, STATUS, Store, atomic_write_json
from mtlprune.store.records import RECORD_FORMAT, CellResult, DenseResult, StatusRecord
from tests.fake_store import cell_result, dense_result

METRICS = {"segment_semantic.miou": 0.25, "normal.mean": 20.0}


def test_results_round_trip_through_the_store(tmp_path):
    store = Store(tmp_path)
    dense = dense_result("d1", METRICS, convergence={"converged": True, "rel_drop": 0.01, "tolerance": 0.05})
    cell = cell_result(
        "c1", "d1", METRICS, control_run_id="k1", selection={"rule": "last", "selected_step": 9}
    )
    store.write_result("d1", dense)
    store.write_result("c1", cell)
    assert store.result("d1") == dense and isinstance(store.result("d1"), DenseResult)
    assert store.result("c1") == cell and isinstance(store.result("c1"), CellResult)
    assert store.result("c1").selection.selected_step == 9
    on_disk = json.loads((tmp_path / "runs" / "c1" / RESULT).read_text())
    assert (
        on_disk["format"] == RECORD_FORMAT and on_disk["stage"] == "cell" and on_disk["dense_run_id"] == "d1"
    )
    assert store.write_status("c1", status="done", finished=1.5) == StatusRecord(status="done", finished=1.5)
    assert store.status_record("c1").finished == 1.5 and store.status("c1") == "done"
    assert Store(tmp_path).status_record("nothing") is None and store.status("nothing") == "pending"


def test_a_result_for_another_stage_or_with_an_unknown_key_is_not_written(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="result of c1 written to stage c2"):
        store.write_result("c2", cell_result("c1", "d1", METRICS))
    with pytest.raises(ValueError, match=r"CellResult: unknown keys \['stpes_total'\]"):
        store.write_result("c1", cell_result("c1", "d1", METRICS, stpes_total=3))
    with pytest.raises(ValueError, match="status"):
        store.write_status("c1", status="finished")  # not one of pending/running/failed/done


def test_files_written_before_records_had_a_format_still_load(tmp_path):
    """The shape this project wrote before typed records: no ``format``, no ``stage`` in the oldest files,
    none of the later optional sections, and keys this version does not know."""
    path = tmp_path / "runs" / "c1" / RESULT
    old = {
        "run_id": "c1",
        "dense_run_id": "d1",
        "metrics": METRICS,
        "sparsity": {"achieved_sparsity": 0.9},
        "steps_total": 400,
        "steps_method": 200,
        "starts_from": "dense",
        "wall_s": 12,
        "some_future_note": "kept",
    }
    atomic_write_json(path, old)
    atomic_write_json(path.with_name(STATUS), {"status": "failed", "error": "RuntimeError: boom"})
    result = Store(tmp_path).result("c1")
    assert isinstance(result, CellResult) and result.format == 1 and result.wall_s == 12.0
    assert result.model_extra == {"some_future_note": "kept"} and result.control_run_id is None
    assert Store(tmp_path).status_record("c1").error == "RuntimeError: boom"


@pytest.mark.parametrize(("name", "what"), [(RESULT, "result"), (STATUS, "status")])
def test_a_newer_format_names_the_file_and_the_version(tmp_path, name, what):
    path = tmp_path / "runs" / "x" / name
    payload = {**dense_result("x", METRICS).payload(), "format": RECORD_FORMAT + 1}
    atomic_write_json(path, payload if what == "result" else {"status": "done", "format": RECORD_FORMAT + 1})
    read = Store(tmp_path).result if what == "result" else Store(tmp_path).status_record
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: {what} format {RECORD_FORMAT + 1}, but this mtlprune")
    ):
        read("x")


def test_a_damaged_result_names_the_file_the_key_and_the_value(tmp_path):
    path = tmp_path / "runs" / "c1" / RESULT
    atomic_write_json(path, {**cell_result("c1", "d1", METRICS).payload(), "steps_total": "many"})
    with pytest.raises(ValueError) as info:
        Store(tmp_path).result("c1")
    assert str(info.value).startswith(f"{path}: not a valid result record (steps_total: ")
    assert "(got 'many')" in str(info.value)
    atomic_write_json(path, [1, 2])
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected a JSON object (result), got list")):
        Store(tmp_path).result("c1")
