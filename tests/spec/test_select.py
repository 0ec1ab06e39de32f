"""`--only KEY=VALUE,...`: which stages run, plan, status and report work on."""

from __future__ import annotations

import pytest

from mtlprune.plan.stages import plan
from mtlprune.spec.select import Selection, SelectionError
from tests.helpers import cells_of, dense_of, tiny_matrix


@pytest.fixture
def matrix():
    # 2 seeds × (random, magnitude) × (0.5, 0.9) = 8 cells + 2 controls, 2 dense stages
    return tiny_matrix(seeds=[0, 1], controls=True)


def _cells(matrix, *only):
    cells = [c.spec for c in cells_of(plan(matrix, Selection.parse(only)))]
    return [(c.method.label, c.target_sparsity, c.seed) for c in cells]


def test_parse_groups_values_by_key():
    sel = Selection.parse(["method=snip,sparsity=0.9", "method=grasp"])
    assert sel.clauses == (("method", ("snip", "grasp")), ("sparsity", (0.9,)))
    assert sel.describe() == "method=snip,method=grasp,sparsity=0.9"
    assert not Selection.parse([]) and not Selection.parse(None)
    for bad in ("method", "=x", "method=", "method=snip,,seed=0"):
        with pytest.raises(SelectionError, match="is not KEY=VALUE"):
            Selection.parse([bad])


def test_same_key_is_any_of_and_different_keys_are_all_of(matrix):
    assert _cells(matrix, "method=magnitude,sparsity=0.9") == [("magnitude", 0.9, 0), ("magnitude", 0.9, 1)]
    assert _cells(matrix, "method=magnitude", "method=random", "seed=1", "sparsity=0.5") == [
        ("random", 0.5, 1),
        ("magnitude", 0.5, 1),
    ]


def test_numbers_compare_as_numbers_and_controls_are_cells(matrix):
    assert _cells(matrix, "sparsity=0.90,seed=0") == [("random", 0.9, 0), ("magnitude", 0.9, 0)]
    assert _cells(matrix, "method=dense-finetune") == [("dense-finetune", 0.0, 0), ("dense-finetune", 0.0, 1)]


def test_dense_stages_follow_the_selected_cells_or_match_themselves(matrix):
    full = plan(matrix)
    assert len(dense_of(full)) == 2 and len(cells_of(full)) == 10
    selected = plan(matrix, Selection.parse(["method=magnitude,seed=1"]))
    assert [d.spec.seed for d in dense_of(selected)] == [1]
    assert {c.needs for c in cells_of(selected)} == {dense_of(selected)[0].run_id}
    # a clause every stage has: dense stages are selected by it too
    only_seed = plan(matrix, Selection.parse(["seed=0"]))
    assert [d.spec.seed for d in dense_of(only_seed)] == [0] and len(cells_of(only_seed)) == 5


def test_any_spec_path_can_select(matrix):
    assert len(cells_of(plan(matrix, Selection.parse(["arch.width=0.125"])))) == 10
    assert len(cells_of(plan(matrix, Selection.parse(["finetune.steps=2,method=random"])))) == 4
    assert _cells(matrix, "tasks=normal,method=random,seed=0,sparsity=0.5") == [("random", 0.5, 0)]


def test_unknown_keys_and_empty_selections_are_errors(matrix):
    with pytest.raises(SelectionError, match=r"no stage of matrix 'tiny' has a field 'metod'"):
        plan(matrix, Selection.parse(["metod=magnitude"]))
    with pytest.raises(SelectionError, match=r"--only method=snip selects no stage of matrix 'tiny'"):
        plan(matrix, Selection.parse(["method=snip"]))


def test_records_filter_on_short_keys():
    sel = Selection.parse(["method=magnitude,sparsity=0.9,tasks=normal"])
    row = {"method": "magnitude", "method_name": "magnitude", "target_sparsity": 0.9, "tasks": "normal,depth"}
    assert sel.matches_record(row)
    assert not sel.matches_record({**row, "target_sparsity": 0.5})
    assert not sel.matches_record({**row, "tasks": "segment_semantic"})
    manifest_cell = {
        "method": "magnitude (w)",
        "method_name": "magnitude",
        "target": 0.9,
        "tasks": ["normal"],
    }
    assert sel.matches_record(manifest_cell)  # the plain name matches a labelled instance
    with pytest.raises(SelectionError, match="the report filters on"):
        Selection.parse(["finetune.lr=0.1"]).check_record_keys()


@pytest.mark.slow
def test_run_status_and_report_work_on_the_selection_only(tmp_path, capsys):
    import yaml

    from mtlprune.cli import main
    from mtlprune.store import Store
    from mtlprune.store.manifest import read_manifest
    from tests.helpers import tiny_matrix_dict

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_matrix_dict()))
    store = tmp_path / "store"
    args = ["--store", str(store), "--no-progress"]
    assert (
        main(["run", str(config), "finetune.steps=1", "--only", "method=magnitude,sparsity=0.9", *args]) == 0
    )
    matrix = tiny_matrix(finetune={"steps": 1, "batch_size": 4})
    selected = [c for c in matrix.expand() if c.method.name == "magnitude" and c.target_sparsity == 0.9]
    others = [c for c in matrix.expand() if c not in selected]
    assert [Store(store).status(c.run_id) for c in selected] == ["done"]
    assert {Store(store).status(c.run_id) for c in others} == {"pending"}
    assert Store(store).status(selected[0].dense().run_id) == "done"
    # the manifest describes the whole (overridden) matrix, so the report shows the rest as missing
    manifest = read_manifest(store, "tiny")
    assert manifest.overrides == ["finetune.steps=1"] and len(manifest.cells) == 4
    capsys.readouterr()
    assert (
        main(["status", str(config), "finetune.steps=1", "--store", str(store), "--only", "method=random"])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 pending" in out and "1 done" in out  # the dense stage and random's two cells
    assert main(["report", str(config), "--store", str(store), "--only", "method=magnitude"]) == 0
    out = capsys.readouterr().out
    assert "cells: 1 done, 1 missing" in out
    assert (store / "tiny" / "report-method=magnitude" / "report.html").is_file()
    assert not (store / "tiny" / "report").exists()


@pytest.mark.slow
def test_a_selection_reaches_the_workers_of_a_local_pool(tmp_path):
    """With --workers 2 the pool's processes run the selected stages only, as one process does."""
    from mtlprune.execution.matrix import run_matrix
    from mtlprune.store import Store

    matrix = tiny_matrix(finetune={"steps": 1, "batch_size": 4})
    only = Selection.parse(["method=random,sparsity=0.5"])
    store = Store(tmp_path)
    outcome = run_matrix(matrix, store, show_progress=False, workers=2, only=only)
    selected = [s.run_id for s in plan(matrix, only)]
    assert len(selected) == 2  # the dense stage and one cell
    assert outcome.failed == {} and sorted(outcome.done) == sorted(selected)
    assert {s.run_id for s in plan(matrix) if store.status(s.run_id) != "pending"} == set(selected)
