"""Real SIGKILLs of a `mtlprune run` process at several points; the re-run ends as an uninterrupted run.

Kill points: during dense training, between two phases of a method (after IMP's first round, before its
second), and during a method's retraining. Completed cells are neither lost nor re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlprune.cli import main
from mtlprune.engine.checkpoint import CHECKPOINT, CHECKPOINT_INFO, read_checkpoint
from mtlprune.plan.stages import plan
from mtlprune.store import Store
from tests.engine.test_resume import _fingerprint, _run_all
from tests.helpers import tiny_matrix, tiny_matrix_dict

pytestmark = pytest.mark.slow  # every test here trains stages end to end

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tiny_matrix_dict(
    methods=[{"name": "magnitude"}, {"name": "imp", "params": {"rate": 0.5, "round_steps": 3}}],
    sparsities=[0.7],
    finetune={"steps": 5, "batch_size": 4},
    runtime={"device": "cpu", "checkpoint_every": 2, "log_every": 1},
)
# Checkpoints in order: dense (call 1) steps 0, 2, 4, 6; magnitude (1) 0, 2, 4, 5; imp round 1 (call 1)
# 0, 2, 3 and round 2 (call 2) 0, 2, 3. The 11th save is the end of IMP's first round.
KILLS = {
    "during dense training": ("step", 3),
    "between imp rounds": ("save", 11),
    "during imp's second round": ("step", 6 + 5 + 3 + 2),
}


def _bench(args: list[str], kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    prefix = ["-m", "tests.kill_driver", kill[0], str(kill[1])] if kill else ["-m", "mtlprune"]
    return subprocess.run(
        [sys.executable, *prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("reference"))
    matrix = tiny_matrix(**{k: v for k, v in CONFIG.items() if k != "name"})
    _run_all(matrix, store)
    return matrix, store


@pytest.mark.parametrize("where", list(KILLS))
def test_sigkill_then_rerun_ends_as_an_uninterrupted_run(reference, where, tmp_path, capsys):
    matrix, ref_store = reference
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    store = Store(tmp_path / "store")
    shutil.copytree(ref_store.root / "data", store.root / "data")  # the rendered synthetic data

    killed = _bench(["run", str(config), "--store", str(store.root), "--no-progress"], KILLS[where])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stages = plan(matrix)
    finished_before = {
        s.run_id: (store.run_dir(s.run_id) / "result.json").stat().st_mtime_ns
        for s in stages
        if store.is_done(s.run_id)
    }
    interrupted = [s.run_id for s in stages if not store.is_done(s.run_id)]
    assert interrupted, "the kill came after the last stage"
    assert (store.run_dir(interrupted[0]) / CHECKPOINT).is_file()
    saved = json.loads((store.run_dir(interrupted[0]) / CHECKPOINT_INFO).read_text())
    payload = read_checkpoint(store.run_dir(interrupted[0]) / CHECKPOINT)
    assert (saved["call"], saved["step"]) == (payload["call"], payload["step"])
    assert main(["status", str(config), "--store", str(store.root)]) == 0
    status = capsys.readouterr().out
    assert "interrupted" in status  # the killed process's lock is stale: its pid is gone
    assert f"checkpoint at step {saved['step']} of training call {saved['call']}" in status

    rerun = _bench(["run", str(config), "--store", str(store.root), "--no-progress"])
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for stage in stages:
        assert _fingerprint(store, stage.run_id) == _fingerprint(ref_store, stage.run_id), stage.run_id
        assert not (store.run_dir(stage.run_id) / CHECKPOINT).exists()
        assert not (store.run_dir(stage.run_id) / CHECKPOINT_INFO).exists()
    for run_id, mtime in finished_before.items():  # completed before the kill: kept, not re-run
        assert (store.run_dir(run_id) / "result.json").stat().st_mtime_ns == mtime
    assert store.result(interrupted[0]).resumed_from is not None
