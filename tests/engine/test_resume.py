"""Resume after a kill: a stage interrupted at any step ends exactly as an uninterrupted one.

The in-process tests interrupt a stage with an exception that no stage code catches (like a kill, nothing
after it runs) at every logged step in turn, then run the stage again; tests/engine/test_resume_sigkill.py
does the same with real SIGKILLs of a `mtlprune run` process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mtlprune.methods  # noqa: F401  (registers the built-in methods)
from mtlprune.engine.checkpoint import CHECKPOINT, read_checkpoint
from mtlprune.engine.runner import run_stage
from mtlprune.plan.stages import plan
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

RUNTIME = {"device": "cpu", "checkpoint_every": 2}


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so no stage code records or survives it."""


def _matrix(method: dict, sparsity: float = 0.7, **overrides):
    overrides.setdefault("runtime", RUNTIME)
    overrides.setdefault("finetune", {"steps": 5, "batch_size": 4})
    return tiny_matrix(methods=[method], sparsities=[sparsity], **overrides)


def _run_all(matrix, store: Store, progress=None) -> None:
    for stage in plan(matrix):
        outcome = run_stage(stage, store, matrix.runtime, progress)
        assert outcome.status == "done", outcome.error


def _fingerprint(store: Store, run_id: str) -> dict:
    """What must not differ between an interrupted and an uninterrupted stage."""
    run_dir = store.run_dir(run_id)
    result = json.loads((run_dir / "result.json").read_text())
    out = {
        "metrics": result["metrics"],
        "sparsity": result["sparsity"]["achieved_sparsity"],
        "steps": result["steps_total"],
        "method_state": result.get("method_state"),
        # a dense stage's convergence measure, divergence reference and trivial predictor
        "dense": [result.get(k) for k in ("convergence", "initial_losses", "trivial_metrics")],
        "log": (run_dir / "log.jsonl").read_text(),
    }
    if (run_dir / "masks.npz").is_file():
        out["masks"] = {n: m.numpy().tobytes() for n, m in load_masks(run_dir).items()}
    if (run_dir / "model.pt").is_file():
        state = torch.load(run_dir / "model.pt", weights_only=True)
        out["model"] = {k: v.numpy().tobytes() for k, v in state.items()}
    return out


def _kill_at(n: int):
    """A progress hook that kills the stage at its n-th logged step (after that step ran)."""
    seen = [0]

    def progress(step: int, record: dict) -> None:
        seen[0] += 1
        if seen[0] == n:
            raise Killed(f"killed at logged step {n} ({record.get('phase')} step {step})")

    return progress, seen


def _count_steps(store: Store, run_id: str) -> int:
    lines = (store.run_dir(run_id) / "log.jsonl").read_text().splitlines()
    return sum(1 for line in lines if "step" in json.loads(line))


METHODS_UNDER_TEST = [
    {"name": "magnitude"},  # one finetune call
    {"name": "imp", "params": {"rate": 0.5, "round_steps": 3}},  # several calls, pruning between them
    {"name": "adapmtl"},  # callback state: thresholds' offset, sliding windows, schedule
    {"name": "rigl", "params": {"delta_t": 2}},  # masks changed during training, optimizer state reset
    {"name": "gmp", "params": {"frequency": 1}},  # masks changed after steps
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of each method under test (log_every 1: every step is in the log)."""
    out = {}
    for method in METHODS_UNDER_TEST:
        store = Store(tmp_path_factory.mktemp(method["name"]))
        matrix = _matrix(method, runtime={**RUNTIME, "log_every": 1})
        _run_all(matrix, store)
        out[method["name"]] = (matrix, store)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS_UNDER_TEST, ids=lambda m: m["name"])
def test_a_cell_killed_at_any_step_resumes_to_the_same_end(reference, method, tmp_path):
    matrix, ref_store = reference[method["name"]]
    dense, cell = plan(matrix)[:2]
    expected = _fingerprint(ref_store, cell.run_id)
    total = _count_steps(ref_store, cell.run_id)
    assert total >= 4
    # every step of short runs; of the 11-step at-init runs the start, a checkpoint, mid-way and the end
    points = range(1, total + 1) if total <= 6 else sorted({1, 3, total // 2, total - 1, total})
    for n in points:
        store = Store(tmp_path / f"kill{n}")
        shutil.copytree(ref_store.run_dir(dense.run_id), store.run_dir(dense.run_id))
        shutil.copytree(ref_store.root / "data", store.root / "data")
        progress, _ = _kill_at(n)
        with pytest.raises(Killed):
            run_stage(cell, store, matrix.runtime, progress)
        assert not store.is_done(cell.run_id)
        checkpoint = store.run_dir(cell.run_id) / CHECKPOINT
        assert checkpoint.is_file()
        read_checkpoint(checkpoint)  # loads with weights_only=True
        outcome = run_stage(cell, store, matrix.runtime)
        assert outcome.status == "done", outcome.error
        assert _fingerprint(store, cell.run_id) == expected, f"killed at logged step {n}"
        assert not checkpoint.exists()  # dropped once the result is written
        result = store.result(cell.run_id)
        assert result.resumed_from is not None


@pytest.mark.slow
def test_the_dense_stage_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    matrix = _matrix({"name": "magnitude"}, runtime={**RUNTIME, "log_every": 1})
    dense = plan(matrix)[0]
    ref = Store(tmp_path / "ref")
    run_stage(dense, ref, matrix.runtime)
    expected = _fingerprint(ref, dense.run_id)
    for n in (1, 3, 4, 6):  # the first step, mid-interval, just after a checkpoint, the last step
        store = Store(tmp_path / f"kill{n}")
        progress, _ = _kill_at(n)
        with pytest.raises(Killed):
            run_stage(dense, store, matrix.runtime, progress)
        payload = read_checkpoint(store.run_dir(dense.run_id) / CHECKPOINT)
        assert payload["step"] == max(s for s in (0, 2, 4) if s <= n - 1)  # the last save before the kill
        assert run_stage(dense, store, matrix.runtime).status == "done"
        assert _fingerprint(store, dense.run_id) == expected
        for name in ("init.pt", "rewind.pt"):
            a = torch.load(ref.run_dir(dense.run_id) / name, weights_only=True)
            b = torch.load(store.run_dir(dense.run_id) / name, weights_only=True)
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_checkpoint_holds_every_piece_of_state_and_loads_weights_only(tmp_path):
    matrix = _matrix({"name": "adapmtl"})
    store = Store(tmp_path)
    dense, cell = plan(matrix)[:2]
    run_stage(dense, store, matrix.runtime)
    progress, _ = _kill_at(2)
    with pytest.raises(Killed):
        run_stage(cell, store, matrix.runtime, progress)
    payload = read_checkpoint(store.run_dir(cell.run_id) / CHECKPOINT)
    assert payload["call"] == 1 and payload["step"] == 0  # the start of the method's training call
    assert set(payload["rng"]) >= {"python", "numpy", "torch"}
    train_state = payload["train"]
    assert set(train_state["runner"]) == {"optimizer", "scaler", "masks", "callbacks", "guard"}
    assert train_state["runner"]["guard"]["above"] == 0 and set(
        train_state["runner"]["guard"]["reference"]
    ) == set(matrix.datasets[0].tasks)  # the divergence guard's reference: the dense stage's step-0 losses
    (callback,) = train_state["runner"]["callbacks"]
    assert {"offset", "weights", "solves", "weighting"} <= set(callback)  # the AdapMTL controller's state
    assert any(".threshold" in key for key in train_state["model"])  # the learnable thresholds
    assert set(payload["owner"]) >= {"masks", "steps_used", "recorded", "calls"}
    assert payload["log"]["bytes"] >= 0


@pytest.mark.slow
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    matrix = _matrix({"name": "magnitude"})
    store = Store(tmp_path)
    dense = plan(matrix)[0]
    run_dir = store.run_dir(dense.run_id)
    run_dir.mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(b"not a checkpoint")
    outcome = run_stage(dense, store, matrix.runtime)
    assert outcome.status == "failed"
    assert "checkpoint.pt: unreadable checkpoint" in outcome.error and "delete it" in outcome.error


@pytest.mark.slow
def test_a_checkpoint_the_code_never_reaches_fails_loudly(tmp_path):
    """A checkpoint of a later train() call than the method makes (its code changed) is not ignored."""
    matrix = _matrix({"name": "magnitude"})
    store = Store(tmp_path)
    dense, cell = plan(matrix)[:2]
    run_stage(dense, store, matrix.runtime)
    progress, _ = _kill_at(1)
    with pytest.raises(Killed):
        run_stage(cell, store, matrix.runtime, progress)
    path = store.run_dir(cell.run_id) / CHECKPOINT
    payload = read_checkpoint(path)
    payload["call"] = 5
    torch.save(payload, path)
    outcome = run_stage(cell, store, matrix.runtime)
    assert outcome.status == "failed" and "never made" in outcome.error


@pytest.mark.slow
def test_checkpoint_every_zero_saves_only_at_phase_boundaries(tmp_path):
    matrix = _matrix({"name": "magnitude"}, runtime={"device": "cpu", "checkpoint_every": 0})
    store = Store(tmp_path)
    saved: list[tuple[int, int]] = []
    from mtlprune.engine import checkpoint as checkpoint_module

    original = checkpoint_module.StageCheckpoint.save

    def spy(self, payload):
        saved.append((payload["call"], payload["step"]))
        original(self, payload)

    checkpoint_module.StageCheckpoint.save = spy
    try:
        _run_all(matrix, store)
    finally:
        checkpoint_module.StageCheckpoint.save = original
    # dense: 6 steps, one call; cell: finetune 5 steps, one call: the start and the end of each
    assert saved == [(1, 0), (1, 6), (1, 0), (1, 5)]


def test_path_helpers_are_plain():
    assert CHECKPOINT == "checkpoint.pt" and Path(CHECKPOINT).suffix == ".pt"


@pytest.mark.slow
def test_every_result_carries_its_provenance(tmp_path):
    matrix = _matrix({"name": "magnitude"})
    store = Store(tmp_path)
    _run_all(matrix, store)
    for stage in plan(matrix):
        result = store.result(stage.run_id)
        prov = result.provenance
        assert set(prov) >= {"commit", "dirty", "packages", "hostname", "device", "start", "end", "wall_s"}
        assert prov["torch_threads"] == result.determinism["cpu_threads"] == 1  # mtlprune.engine.determinism
        assert prov["packages"]["torch"] == torch.__version__.split("+")[0]
        assert prov["device"] == "cpu" and result.resumed_from is None
        assert prov["start"] < prov["end"] and prov["wall_s"] > 0
        assert result.steps_total > 0
