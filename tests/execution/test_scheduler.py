"""The claim loop: concurrent `mtlprune run`s, idempotent re-runs, extension, failures, retry, pools.

"Ran exactly once" is read from ``<store>/events.jsonl`` (one ``claim`` line per stage run) and from each
stage's log.jsonl, whose length a second run would change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

import mtlprune.engine.cell
import mtlprune.engine.dense
from mtlprune import registry
from mtlprune.cli import main
from mtlprune.execution.events import read_events
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import plan
from mtlprune.registry import METHODS, load_plugins
from mtlprune.store import Store
from tests.helpers import SMALL, Priced, load_masks, tiny_matrix, tiny_matrix_dict

ROOT = Path(__file__).resolve().parents[2]


def _dict(**overrides) -> dict:
    return tiny_matrix_dict(**{**SMALL, **overrides})


def _matrix(**overrides):
    return tiny_matrix(**{**SMALL, **overrides})


def _config(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(_dict(**overrides)))
    return path


def _claims(store: Store) -> Counter:
    return Counter(e["run_id"] for e in read_events(store) if e["event"] == "claim")


PLUGIN = "tests.plugins.flaky_once"


@pytest.fixture
def test_plugin():
    """tests/plugins/flaky_once.py loaded, and unloaded afterwards (other files list every method)."""
    load_plugins([PLUGIN])
    yield PLUGIN
    for name in ("test-flaky-once", "test-crash-worker"):
        METHODS._items.pop(name, None)
    registry._loaded.discard(PLUGIN)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """SMALL (one dense stage, magnitude @ 0.5) run to the end, with its config file."""
    root = tmp_path_factory.mktemp("finished")
    store = Store(root / "store")
    outcome = run_matrix(_matrix(), store, show_progress=False)
    assert outcome.failed == {} and len(outcome.done) == 2
    return _config(root / "small.yaml"), store


@pytest.mark.slow
def test_two_concurrent_bench_runs_run_each_stage_once_and_cells_after_their_dense(tmp_path, finished):
    config = _config(tmp_path / "two.yaml", seeds=[0, 1])
    store = Store(tmp_path / "store")
    cmd = [sys.executable, "-m", "mtlprune", "run", str(config), "--store", str(store.root), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    stages = plan(_matrix(seeds=[0, 1]))
    assert len(stages) == 4
    assert _claims(store) == {s.run_id: 1 for s in stages}  # every stage claimed exactly once, by either
    events = read_events(store)
    assert {e["pid"] for e in events} <= {p.pid for p in procs}
    finishes = [e for e in events if e["event"] == "finish"]
    assert sorted(e["run_id"] for e in finishes) == sorted(s.run_id for s in stages)
    assert all(e["status"] == "done" for e in finishes)
    claimed_at = {e["run_id"]: e["time"] for e in events if e["event"] == "claim"}
    for cell in (s for s in stages if s.kind == "cell"):
        dense_done = (store.run_dir(cell.needs) / "result.json").stat().st_mtime
        assert claimed_at[cell.run_id] > dense_done  # a cell starts only once its dense stage has finished
    # The seed-0 stages are the fixture's: a second run of one would have appended to its log.
    _, reference = finished
    for stage in plan(_matrix()):
        lines = (store.run_dir(stage.run_id) / "log.jsonl").read_text().splitlines()
        assert len(lines) == len((reference.run_dir(stage.run_id) / "log.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_rerun_of_a_finished_matrix_builds_no_model(finished, monkeypatch, capsys):
    config, store = finished

    def no_model(spec):
        raise AssertionError("a finished matrix must not build a model")

    for module in (mtlprune.engine.dense, mtlprune.engine.cell):
        monkeypatch.setattr(module, "build_model", no_model)
    before = len(read_events(store))
    for _ in range(2):
        outcome = run_matrix(_matrix(), store, show_progress=False)
        assert outcome.done == [] and outcome.failed == {}
        assert outcome.skipped == [s.run_id for s in plan(_matrix())]
    assert main(["run", str(config), "--store", str(store.root), "--no-progress"]) == 0
    assert len(read_events(store)) == before  # nothing claimed
    assert "magnitude" in capsys.readouterr().out  # the summary table is still printed


@pytest.mark.slow
def test_extending_a_finished_matrix_runs_only_the_new_stages(finished, tmp_path):
    _, reference = finished
    store = Store(tmp_path / "store")
    shutil.copytree(reference.root, store.root)
    old = {s.run_id for s in plan(_matrix())}
    extended = _matrix(
        methods=[{"name": "magnitude"}, {"name": "random"}], sparsities=[0.5, 0.7], seeds=[0, 1]
    )
    everything = {s.run_id for s in plan(extended)}
    assert old < everything and len(everything) == 2 + 8  # 2 dense stages, 2 methods × 2 targets × 2 seeds
    before = _claims(store)
    outcome = run_matrix(extended, store, show_progress=False)
    assert outcome.failed == {} and set(outcome.skipped) == old and set(outcome.done) == everything - old
    assert _claims(store) - before == Counter({run_id: 1 for run_id in everything - old})


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_the_matrix_and_retry_failed_runs_it_once_more(
    tmp_path, capsys, test_plugin
):
    marker = tmp_path / "attempted"
    flaky = {"name": "test-flaky-once", "params": {"marker": str(marker)}}
    config = _config(tmp_path / "flaky.yaml", methods=[flaky, {"name": "magnitude"}])
    store = Store(tmp_path / "store")
    run = ["--plugin", test_plugin, "run", str(config), "--store", str(store.root), "--no-progress"]
    assert main(run) == 1
    flaky_cell, magnitude_cell = (s for s in stages_of_config(config) if s.kind == "cell")
    assert store.status(magnitude_cell.run_id) == "done"  # the other cell went on
    record = store.status_record(flaky_cell.run_id)
    assert record.status == "failed" and record.kind == "error"
    assert record.error == f"FlakyOnceError: first attempt fails on purpose (created {marker})"
    capsys.readouterr()
    assert main(["--plugin", test_plugin, "status", str(config), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "failed (error)" in out and "first attempt fails on purpose" in out and "2 done, 1 failed" in out
    assert main(run) == 1  # without --retry-failed a failed stage stays failed: nothing runs
    assert _claims(store)[flaky_cell.run_id] == 1
    assert main([*run, "--retry-failed"]) == 0
    assert store.status(flaky_cell.run_id) == "done"
    assert _claims(store) == {s.run_id: 1 + (s.run_id == flaky_cell.run_id) for s in stages_of_config(config)}
    assert main([*run, "--retry-failed"]) == 0  # retrying with nothing failed runs nothing
    assert sum(_claims(store).values()) == 4


def stages_of_config(config: Path):
    from mtlprune.spec import load_matrix

    return plan(load_matrix(config))


@pytest.mark.slow
def test_cells_of_a_failed_dense_stage_are_blocked_not_waited_for(tmp_path, monkeypatch):
    matrix = _matrix(sparsities=[0.5, 0.7])
    store = Store(tmp_path)
    dense, *cells = plan(matrix)

    def broken(spec):
        raise RuntimeError("no model today")

    for module in (mtlprune.engine.dense, mtlprune.engine.cell):
        monkeypatch.setattr(module, "build_model", broken)
    outcome = run_matrix(matrix, store, show_progress=False, poll_s=0.05)
    assert outcome.done == [] and set(outcome.failed) == {dense.run_id, *(c.run_id for c in cells)}
    assert store.status_record(dense.run_id).error == "RuntimeError: no model today"
    for cell in cells:
        record = store.status_record(cell.run_id)
        assert record.kind == "blocked"
        assert f"its dense stage {dense.run_id} has no result (RuntimeError: no model today)" in record.error
    monkeypatch.undo()
    assert set(run_matrix(matrix, store, show_progress=False).failed) == set(outcome.failed)  # no retry
    retried = run_matrix(matrix, store, show_progress=False, retry_failed=True)
    assert retried.failed == {} and retried.done == [dense.run_id, *(c.run_id for c in cells)]


@pytest.mark.slow
def test_a_pool_of_two_workers_gives_the_results_of_one_and_survives_a_crash(finished, tmp_path, test_plugin):
    _, reference = finished  # SMALL run by one in-process worker
    methods = [{"name": "magnitude"}, {"name": "random"}, {"name": "test-crash-worker"}]
    matrix = _matrix(methods=methods)
    dense, magnitude, random_cell, crash = plan(matrix)
    store = Store(tmp_path)
    threads = torch.get_num_threads()
    outcome = run_matrix(matrix, store, show_progress=False, workers=2, poll_s=0.2, plugins=[test_plugin])
    assert torch.get_num_threads() == threads
    assert set(outcome.done) == {dense.run_id, magnitude.run_id, random_cell.run_id}
    # The worker that ran the crashing cell died (SIGKILL); the parent recorded it and the rest went on.
    assert list(outcome.failed) == [crash.run_id]
    assert re.fullmatch(
        r"WorkerCrashed: worker process \d+ died with exit code -9 \(killed by a signal; .*\)",
        outcome.failed[crash.run_id],
    )
    assert not (store.run_dir(crash.run_id) / "lock").exists()
    claims = _claims(store)
    assert {k: v for k, v in claims.items() if k != crash.run_id} == {
        dense.run_id: 1,
        magnitude.run_id: 1,
        random_cell.run_id: 1,
    }
    for stage in (dense, magnitude):  # bit-identical to the single in-process worker's
        assert store.result(stage.run_id).metrics == reference.result(stage.run_id).metrics
    ours, theirs = (
        load_masks(store.run_dir(magnitude.run_id)),
        load_masks(reference.run_dir(magnitude.run_id)),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_worker_environment_gives_each_worker_one_gpu_round_robin():
    from mtlprune.execution.local import worker_env

    assert [worker_env(i, ["0", "1", "3"]) for i in range(4)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
        {"CUDA_VISIBLE_DEVICES": "3"},
        {"CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert worker_env(1, ["2"]) == {} and worker_env(0, []) == {}  # one GPU is shared as it is


def test_status_names_the_holder_of_a_running_stage_and_flags_a_stale_lock(tmp_path, capsys):
    from mtlprune.execution.locks import LOCK

    config = _config(tmp_path / "small.yaml")
    store = Store(tmp_path / "store")
    dense, cell = plan(_matrix())
    now = time.time()
    for stage, heartbeat in ((dense, now - 5), (cell, now - 1000)):
        store.run_dir(stage.run_id).mkdir(parents=True)
        store.write_status(stage.run_id, status="running")
        lock = {"host": "node7", "pid": 99, "claimed_at": now - 2000, "heartbeat": heartbeat, "token": "t",
                "job": "123_4"}  # fmt: skip
        (store.run_dir(stage.run_id) / LOCK).write_text(json.dumps(lock))
    assert main(["status", str(config), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    held = r"held by node7:99, job 123_4, claimed 200\d s ago, heartbeat"
    assert re.search(rf"{dense.run_id} {re.escape(dense.label)}: {held} [5-7] s ago\n", out)
    assert re.search(rf"{cell.run_id} {re.escape(cell.label)}: {held} 100\d s ago  STALE: heartbeat", out)
    assert "; the next run takes it over" in out
    assert "1 interrupted, 1 running" in out


def test_eta_is_the_estimate_of_the_pending_stages_over_the_workers():
    from mtlprune.plan.estimate import EtaModel, StageTimes, format_duration

    nyu = ("nyuv2", "deeplab_resnet34", 0.125)
    dense = Priced("d", "dense", (*nyu, 100))
    mag = [Priced(f"m{i}", "cell", (*nyu, "magnitude", 4)) for i in range(2)]
    snip = [Priced(f"s{i}", "cell", (*nyu, "snip", 4)) for i in range(2)]
    times = StageTimes()
    for wall in (100.0, 140.0):
        times.add(Priced("old", "dense", (*nyu, 100)), wall)  # two earlier dense stages: 120 s
    eta = EtaModel([dense, *mag, *snip], times, parallel=2)
    assert eta.eta_s() is None  # no cell measured yet
    eta.finished("m0", 10.0)  # magnitude 10 s; snip falls back to the cells of (nyuv2, resnet34, 0.125)
    assert eta.eta_s() == pytest.approx((120 + 10 + 2 * 10) / 2)
    eta.finished("d", 60.0)  # none left
    eta.finished("s0", 30.0)  # snip's own key now: 30 s; magnitude's stays 10 s
    assert eta.eta_s() == pytest.approx((10 + 30) / 2)
    eta.finished("m1", None)  # failed: no measurement, no longer pending
    assert eta.eta_s() == pytest.approx(30 / 2)
    eta.finished("unknown", 5.0)  # not a stage of this run: ignored
    assert eta.eta_s() == pytest.approx(30 / 2)
    assert [format_duration(s) for s in (None, 0.4, 59, 61, 3725)] == [
        "?",
        "0 s",
        "59 s",
        "1 min",
        "1 h 2 min",
    ]


def test_reporter_is_lines_off_a_terminal_and_bars_on_one():
    import io

    from mtlprune.execution.progress import BarReporter, LineReporter, Reporter, make_reporter
    from mtlprune.plan.estimate import EtaModel, StageTimes

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(make_reporter(False)) is Reporter
    assert isinstance(make_reporter(True, io.StringIO()), LineReporter)
    assert isinstance(make_reporter(True, Terminal()), BarReporter)
    stream = io.StringIO()
    lines = LineReporter(stream, every_steps=2)
    key = ("nyuv2", "deeplab_resnet34", 0.125)
    pending = [Priced("aaaa", "dense", key), Priced("bbbb", "cell", key)]
    times = StageTimes()
    times.add(Priced("cccc", "cell", key), 4.0)
    lines.start(3, 1, EtaModel(pending, times))
    lines.stage_started("aaaa", "dense", "nyuv2 seed 0", total_steps=4)
    for step in range(4):
        lines.step(step, {"phase": "dense", "step": step, "loss": 1.0 / (step + 1)})
    lines.stage_finished("aaaa", "dense", "nyuv2 seed 0", "done", 6.0)
    lines.stage_started("bbbb", "cell", "magnitude@0.5 seed 0")
    lines.stage_finished("bbbb", "cell", "magnitude@0.5 seed 0", "failed", None, "RuntimeError: boom")
    text = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]  # without the clock
    assert text == [
        "matrix: 3 stage(s), 1 already done, ETA ?",
        "start dense aaaa nyuv2 seed 0",
        "  aaaa dense step 2/4 loss 0.5000",
        "  aaaa dense step 4/4 loss 0.2500",
        "done   dense aaaa nyuv2 seed 0 in 6 s [2/3, ETA 4 s]",
        "start cell bbbb magnitude@0.5 seed 0",
        "FAILED cell bbbb magnitude@0.5 seed 0 in 0 s: RuntimeError: boom [3/3, 1 failed, ETA 0 s]",
    ]
    bars = BarReporter(Terminal())
    bars.start(2, 0, EtaModel(pending))
    bars.stage_started("aaaa", "dense", "nyuv2 seed 0", total_steps=4)
    bars.step(2, {"phase": "dense", "loss": 0.5})
    assert (bars.stage_bar.n, bars.stage_bar.total) == (3, 4)
    bars.stage_finished("aaaa", "dense", "nyuv2 seed 0", "done", 6.0)
    assert bars.matrix_bar.n == 1 and "ETA ?" in bars.matrix_bar.postfix
    bars.close()
