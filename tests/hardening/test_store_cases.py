"""The store catalogue: damaged, missing or unwritable store files, one row each (tests/hardening/README.md).

Every row damages a copy of one finished store (a dense stage and two cells, trained once per module) and
then checks the whole chain: `mtlprune store check` names the file and what `run` will do (exit 1);
`mtlprune status` and `Store.status` agree; `mtlprune report` renders, listing a damaged stage with its
path; `mtlprune run` does what the check said (sets aside and recomputes the same numbers, or keeps), after
which the store checks clean.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mtlprune.cli import main
from mtlprune.execution.events import EVENTS, EventLogWarning
from mtlprune.store import RESULT, SPEC, STATUS, Store
from mtlprune.store.integrity import ACTIONS, DAMAGED
from tests.helpers import SMALL, tiny_matrix_dict


@dataclass(frozen=True)
class Ids:
    dense: str
    cell: str  # magnitude
    other: str  # random


@dataclass(frozen=True)
class Finished:
    config: Path
    store: Path
    ids: Ids


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    root = tmp_path_factory.mktemp("finished")
    config = root / "small.yaml"
    matrix = tiny_matrix_dict(**{**SMALL, "methods": [{"name": "magnitude"}, {"name": "random"}]})
    config.write_text(yaml.safe_dump(matrix))
    assert main(["run", str(config), "--store", str(root / "store"), "--no-progress"]) == 0
    cells = json.loads((root / "store" / "tiny" / "matrix.json").read_text())["cells"]
    by_method = {c["method_name"]: c for c in cells}
    ids = Ids(
        by_method["magnitude"]["dense_run_id"],
        by_method["magnitude"]["run_id"],
        by_method["random"]["run_id"],
    )
    return Finished(config, root / "store", ids)


def _copy(finished: Finished, tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "store"
    shutil.copytree(finished.store, store, copy_function=shutil.copy2)  # mtimes kept, like `cp -a`
    return finished.config, store


# ----------------------------------------------------------------------------------------------- damage


def _run(store: Path, run_id: str) -> Path:
    return store / "runs" / run_id


def delete_result(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / RESULT
    path.unlink()
    return path


def empty_result(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / RESULT
    path.write_text("{}")
    return path


def garbage_result(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / RESULT
    path.write_bytes(b'{"run_id": "x", \xff\xfe')
    return path


def delete_spec(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / SPEC
    path.unlink()
    return path


def garble_dense_model(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.dense) / "model.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # same size, garbled in the middle
    path.write_bytes(bytes(data))
    return path


def garble_legacy_dense_model(store: Path, ids: Ids) -> Path:
    """A result written before results recorded their files (no ``files``): the zip CRCs decide."""
    result = _run(store, ids.dense) / RESULT
    payload = json.loads(result.read_text())
    del payload["files"]
    result.write_text(json.dumps(payload))
    return garble_dense_model(store, ids)


def truncate_masks(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / "masks.npz"
    path.write_bytes(path.read_bytes()[:100])
    return path


def garbage_status(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / STATUS
    path.write_text("not json")
    return path


def foreign_result(store: Path, ids: Ids) -> Path:
    path = _run(store, ids.cell) / RESULT
    shutil.copy2(_run(store, ids.other) / RESULT, path)
    return path


BAD_LINE = '{"event": "claim", "run_id": oops'


def bad_event_line(store: Path, ids: Ids) -> Path:
    delete_result(store, ids)  # work for the pool, which reads the events log
    path = store / "events.jsonl"
    with path.open("a") as fh:
        fh.write(BAD_LINE + "\n")
    return path


@dataclass(frozen=True)
class StoreCase:
    """One damage, what `store check` says about the file, and what `status` shows for the stage."""

    id: str
    damage: Callable[[Path, Ids], Path]
    what: str  # a fragment of the check's line for the damaged file
    action: str  # recompute | keep | person
    stage: str  # which stage it hits: dense | cell
    status: str  # what the store says about that stage before `run`
    workers: int = 1
    run_code: int = 0  # the exit code of `mtlprune run` afterwards


CASES = [
    StoreCase(
        "result-deleted", delete_result, "missing, though status.json says done", "recompute", "cell", DAMAGED
    ),
    StoreCase(
        "result-empty-object", empty_result, "not a valid result record (", "recompute", "cell", DAMAGED
    ),
    StoreCase(
        "result-not-utf8",
        garbage_result,
        "not UTF-8 text (byte 0xff at offset 16: invalid start byte)",
        "recompute",
        "cell",
        DAMAGED,
    ),
    StoreCase("spec-deleted", delete_spec, "missing", "keep", "cell", "done"),
    StoreCase(
        "dense-model-garbled",
        garble_dense_model,
        "content differs from the sha256",
        "recompute",
        "dense",
        DAMAGED,
    ),
    StoreCase(
        "masks-truncated", truncate_masks, "bytes, but the result recorded", "recompute", "cell", DAMAGED
    ),
    StoreCase("status-garbled", garbage_status, "unreadable (corrupt JSON", "keep", "cell", "done"),
    StoreCase(
        "result-of-another-stage",
        foreign_result,
        "but lies in the folder of",
        "person",
        "cell",
        DAMAGED,
        run_code=1,
    ),
    StoreCase(
        "events-line-malformed", bad_event_line, "is not a JSON record", "person", "cell", DAMAGED, workers=2
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_store_case(
    case: StoreCase, finished: Finished, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config, store_root = _copy(finished, tmp_path)
    ids = finished.ids
    run_id = ids.dense if case.stage == "dense" else ids.cell
    before = json.loads((finished.store / "runs" / run_id / RESULT).read_text())
    path = case.damage(store_root, ids)
    assert not store_root.joinpath("runs", run_id, "damaged").exists()
    store = Store(store_root)
    capsys.readouterr()

    # 1. the check names the file, what is wrong and what `run` does; exit 1
    assert main(["store", "check", "--store", str(store_root)]) == 1
    out = capsys.readouterr().out
    line = next((x for x in out.splitlines() if x.startswith(f"{path}: ")), None)
    assert line is not None, out
    what, how = line.removeprefix(f"{path}: ").split(" → ")
    assert case.what in what and how.startswith(ACTIONS[case.action]), line
    assert "problem(s) in 3 stage folders" in out

    # 2. the status is decided from the result files
    assert store.status(run_id) == case.status
    assert main(["status", str(config), "--store", str(store_root)]) == 0
    shown = capsys.readouterr().out
    assert case.status in shown
    if case.status == DAMAGED:  # each problem, with what `run` does
        assert "damaged:" in shown and f"{run_id} " in shown
    assert main(["plan", str(config), "--store", str(store_root)]) == 0  # prices a damaged stage as pending
    assert case.status in capsys.readouterr().out

    # 3. the report renders the rest and lists a damaged stage with its path
    assert main(["report", str(config), "--store", str(store_root)]) == 0
    out = capsys.readouterr().out
    page = (store_root / "tiny" / "report" / "report.html").read_text()
    if case.status == DAMAGED:
        assert f"  damaged: {run_id}: " in out
        if path.parent.name == run_id:  # the damaged file is the stage's own: named
            assert str(path) in out and str(path) in page
    else:
        assert "cells: 2 done" in out  # a finished result stays visible

    # 4. `run` does what the check said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EventLogWarning)
        code = main(
            ["run", str(config), "--store", str(store_root), "--no-progress", "--workers", str(case.workers)]
        )
    skipped = [str(w.message) for w in caught if w.category is EventLogWarning]
    assert skipped == (
        [f"{path}: line 7 is not an event record ('{BAD_LINE}'); skipped"] if path.name == EVENTS else []
    )
    out = capsys.readouterr()
    assert code == case.run_code, out
    if case.action == "person":  # what `run` cannot mend is never overwritten and still listed
        assert main(["store", "check", "--store", str(store_root)]) == 1
        lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{path}: ")]
        assert len(lines) == 1 and case.what in lines[0]
        if path.name == RESULT:
            other = (store_root / "runs" / ids.other / RESULT).read_bytes()
            assert path.read_bytes() == other and store.status(run_id) == DAMAGED
        return
    assert main(["store", "check", "--store", str(store_root)]) == 0, capsys.readouterr().out
    after = json.loads((store_root / "runs" / run_id / RESULT).read_text())
    assert after["metrics"] == before["metrics"]
    aside = sorted((store_root / "runs" / run_id).glob("damaged/*/problems.json"))
    if case.action == "recompute":
        (note,) = aside
        recorded = json.loads(note.read_text())
        assert str(path) in [p["path"] for p in recorded["problems"]]
        assert set(after["files"]) == set(before["files"])
        for name, stored in after["files"].items():  # a deterministic stage recomputes the same files
            assert stored["sha256"] == before["files"][name]["sha256"], name
    else:
        assert not aside
        assert after == before


# ----------------------------------------------------------------------------------- unusable stores


def _store_is_file(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    store.write_text("")
    return store, f"store {store}: is a file, expected a store folder (or a path that does not exist yet)"


def _runs_is_file(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    store.mkdir()
    (store / "runs").write_text("")
    return store, f"store {store / 'runs'}: is a file, expected the folder of stage results"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "plan", "status"])
@pytest.mark.parametrize("make", [_store_is_file, _runs_is_file], ids=["store-is-a-file", "runs-is-a-file"])
def test_unusable_store(
    make: Callable, command: str, finished: Finished, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store, message = make(tmp_path)
    assert main([command, str(finished.config), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


@pytest.mark.slow
def test_read_only_store(finished: Finished, tmp_path: Path, monkeypatch, capsys) -> None:
    """A store this user cannot write: `run` refuses before any work, naming it; `status` still reads it.
    (Tests run as root, which writes anywhere: the permission answer is what the check asks of os.access.)"""
    config, store = _copy(finished, tmp_path)
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(store.resolve()):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    assert main(["run", str(config), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: store {store}: is not writable by this user (a read-only store?)"]
    assert main(["status", str(config), "--store", str(store)]) == 0
    assert "3 done" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------- modes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_finished_store_files_follow_the_umask(finished: Finished) -> None:
    """Every file a run writes gets the mode a plain open gives (0o666 less the umask), the atomic ones
    (results, specs, statuses, masks, checkpoints, manifest, Parquet) included: a group shares a store."""
    expected = 0o666 & ~_umask()
    modes = {
        str(p.relative_to(finished.store)): p.stat().st_mode & 0o777
        for p in finished.store.rglob("*")
        if p.is_file()
    }
    names = {Path(p).name for p in modes}
    assert {"result.json", "spec.json", "status.json", "model.pt", "masks.npz", "matrix.json"} <= names
    assert "results.parquet" in names
    assert {p: m for p, m in modes.items() if m != expected} == {}


@pytest.mark.parametrize("umask", [0o002, 0o007, 0o077])
def test_atomic_writes_follow_the_umask(umask: int, tmp_path: Path) -> None:
    from mtlprune.store import atomic_write_json
    from mtlprune.store.maskio import write_masks

    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        write_masks(tmp_path / "m.npz", {"w": __import__("numpy").ones((3,), dtype=bool)})
    finally:
        os.umask(previous)
    for name in ("a.json", "m.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.npz"]  # no temp file left


def test_a_garbled_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    """torch's own unpickling text suggests `weights_only=False`: the error names the file instead."""
    from mtlprune.engine.build import load_state

    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive" * 10)
    with pytest.raises(ValueError) as info:
        load_state(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable checkpoint (") and "\n" not in message
    assert "weights_only=False" not in message
