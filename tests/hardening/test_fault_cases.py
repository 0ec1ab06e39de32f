"""The fault catalogue: one row per hostile case and what must happen (tests/hardening/README.md).

Divergence (mtlprune.engine.divergence): a learning rate of 1e6 in the dense stage or in a cell's training
ends the stage as ``failed (diverged)`` with a one-line error and the step, never with a result — on every
training path (a plain finetune, IMP's rounds, AdapMTL's own thresholds and callbacks) and for a call of a
single step, whose only update no step measured.

Interrupts (mtlprune.execution.interrupts): Ctrl-C and SIGTERM, in one process or a pool, print exactly one
line per interrupted stage, ``interrupted; <kind> <run id> (<label>) resumes from step N``, with the step of
the checkpoint the next run resumes from; no traceback from any process; exit 130 / 143; every lock
released, so the next run resumes from that step at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlprune.engine.checkpoint import CHECKPOINT_INFO
from mtlprune.execution.events import read_events
from mtlprune.execution.locks import LOCK
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import plan
from mtlprune.spec import parse_matrix
from mtlprune.store import Store
from tests.helpers import TASKS3, tiny_matrix_dict

pytestmark = pytest.mark.slow  # every row trains stages

ROOT = Path(__file__).resolve().parents[2]
SEG = ["segment_semantic"]  # metrics all higher-is-better: only the loss tells a garbage model apart

# ------------------------------------------------------------------------------------------ divergence


@dataclass(frozen=True)
class Diverges:
    """A matrix (tiny_matrix_dict overrides) and what its ``stage`` (dense | cell) must end as."""

    tasks: list[str]
    overrides: dict[str, Any]
    stage: str
    error: str | None  # the one-line error (regex); None: the stage must finish (not a fault)


FT = {"steps": 4, "batch_size": 4, "lr": 1e6}
DIVERGENCE = {
    "train.lr=1e6: the dense stage": Diverges(
        TASKS3, {"train": {"steps": 6, "batch_size": 4, "lr": 1e6}}, "dense",
        r"diverged at step \d: task loss above 10× the untrained network's (at the last step|for \d+ consec)",
    ),
    "train.lr=1e6, one step: the dense stage after its only update": Diverges(
        SEG, {"train": {"steps": 1, "batch_size": 4, "lr": 1e6}}, "dense",
        r"diverged after the last update \(step 1\): task loss above 10× the untrained network's at the end",
    ),
    "finetune.lr=1e6: magnitude's finetune": Diverges(
        TASKS3, {"finetune": FT}, "cell", r"diverged at step \d: task loss above 10× the untrained network's"
    ),
    "finetune.lr=1e6, one step: magnitude after its only update": Diverges(
        SEG, {"finetune": {**FT, "steps": 1}}, "cell",
        r"diverged after the last update \(step 1\): task loss above 10× the untrained network's at the end",
    ),
    "finetune.lr=1e6: IMP's first round": Diverges(
        TASKS3,
        {"finetune": FT, "methods": [{"name": "imp", "params": {"rate": 0.5, "round_steps": 3}}]},
        "cell", r"diverged at step \d: task loss above 10× the untrained network's at the last step",
    ),
    "finetune.lr=1e6: AdapMTL (thresholds, callbacks, its own parameter groups)": Diverges(
        TASKS3, {"finetune": FT, "methods": [{"name": "adapmtl"}]}, "cell",
        r"diverged at step \d: task loss above 10× the untrained network's at the last step",
    ),
    "finetune.lr=1e6: GMP trains from init on train.lr, never finetune.lr (done)": Diverges(
        TASKS3, {"finetune": FT, "methods": [{"name": "gmp", "params": {"frequency": 2}}]}, "cell", None
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DIVERGENCE))
def test_divergence(case, tmp_path_factory):
    row = DIVERGENCE[case]
    data = tiny_matrix_dict(sparsities=[0.5], methods=[{"name": "magnitude"}])
    data["datasets"][0]["tasks"] = row.tasks
    data.update(row.overrides)
    matrix = parse_matrix(data, "<faults>")
    dense, cell = plan(matrix)
    # The cells of every row share their dense stage (a function of data, arch, train and seed alone).
    store = Store(tmp_path_factory.getbasetemp() / "divergence" / "-".join(row.tasks))
    outcome = run_matrix(matrix, store, show_progress=False)
    stage = dense if row.stage == "dense" else cell
    if row.error is None:
        assert store.is_done(stage.run_id) and outcome.failed == {}
        return
    record = store.status_record(stage.run_id)
    assert (record.status, record.kind) == ("failed", "diverged"), record.error
    assert "\n" not in record.error and re.fullmatch(r"Divergence: " + row.error + ".*", record.error)
    assert not (store.run_dir(stage.run_id) / "result.json").exists()
    details = record.divergence
    assert isinstance(details["step"], int) and set(details["losses"]) == set(row.tasks)
    assert any(v > details["ceilings"][t] for t, v in details["losses"].items()), details
    assert stage.run_id in outcome.failed
    if stage is dense:  # its cell cannot run without it
        assert store.status_record(cell.run_id).kind == "blocked"


# ------------------------------------------------------------------------------------------ interrupts

# One task, a dense stage long enough to be caught mid-training, then IMP in two rounds (training calls 1
# and 2). Checkpoints every 2 steps: the dense stage saves at steps 0, 2, ..., 60 (31 saves), IMP's first
# round at 0, 2, 3, its second at 0 (the 35th save), 2 (the 36th).
CONFIG = tiny_matrix_dict(
    methods=[{"name": "imp", "params": {"rate": 0.5, "round_steps": 3}}],
    sparsities=[0.7],
    train={"steps": 60, "batch_size": 4, "lr": 0.003},
    finetune={"steps": 1, "batch_size": 4},
    runtime={"device": "cpu", "checkpoint_every": 2, "log_every": 1},
)
CONFIG["datasets"][0]["tasks"] = SEG


@dataclass(frozen=True)
class Interrupt:
    """``signal`` sent to ``mtlprune run --workers N``: once a checkpoint past step 0 is written (``at``
    None: polled, to the process group for SIGINT as a terminal's Ctrl-C), or at a kill-driver point."""

    signal: str
    workers: int = 1
    at: tuple[str, int] | None = None
    where: str | None = None  # the line's end; None: "resumes from step <the saved checkpoint's>"
    stage: str = "dense"


INTERRUPTS = {
    "Ctrl-C, one process": Interrupt("INT"),
    "SIGTERM, one process": Interrupt("TERM"),
    "Ctrl-C, a pool of 2": Interrupt("INT", workers=2),
    "SIGTERM, a pool of 2": Interrupt("TERM", workers=2),
    "SIGTERM before the first checkpoint": Interrupt(
        "TERM", at=("open:TERM", 1), where="starts again (no checkpoint yet)"
    ),
    "Ctrl-C in IMP's second round": Interrupt(
        "INT", at=("save:INT", 36), where="resumes from step 2 of training call 2", stage="cell"
    ),
}


def _saved(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / CHECKPOINT_INFO).read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("case", list(INTERRUPTS))
def test_interrupt(case, tmp_path):
    row = INTERRUPTS[case]
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    store = Store(tmp_path / "store")
    matrix = parse_matrix(CONFIG, "<faults>")
    dense, cell = plan(matrix)
    stage = dense if row.stage == "dense" else cell
    args = ["run", str(config), "--store", str(store.root), "--no-progress", "--workers", str(row.workers)]
    prefix = ["-m", "tests.kill_driver", row.at[0], str(row.at[1])] if row.at else ["-m", "mtlprune"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, *prefix, *args], cwd=ROOT, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    signum = getattr(signal, f"SIG{row.signal}")
    try:
        if row.at is None:
            deadline = time.time() + 120
            while (_saved(store.run_dir(stage.run_id)) or {}).get("step", 0) < 2:
                assert proc.poll() is None and time.time() < deadline, "no checkpoint past step 0"
                time.sleep(0.02)
            (os.killpg if signum == signal.SIGINT else os.kill)(proc.pid, signum)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    saved = _saved(store.run_dir(stage.run_id))
    if row.where is None:
        assert saved is not None and saved["call"] == 1 and saved["step"] >= 2, saved
        where = f"resumes from step {saved['step']}"
    else:
        where = row.where
    line = f"interrupted; {stage.kind} {stage.run_id} ({stage.label}) {where}"
    assert output == line + "\n", output  # exactly one line: no traceback, nothing from the workers
    assert proc.returncode == 128 + signum
    assert not list(store.runs.glob(f"*/{LOCK}*")), "a lock was left behind"
    if row.where and "call 2" in row.where:
        assert (saved["call"], saved["step"]) == (2, 2)

    before = len(read_events(store))
    outcome = run_matrix(matrix, store, show_progress=False)  # at once: nothing stale to wait for
    assert outcome.failed == {} and store.is_done(dense.run_id) and store.is_done(cell.run_id)
    resumed = store.result(stage.run_id).resumed_from
    if saved is None:
        assert resumed is None
    else:
        assert (resumed.call, resumed.step) == (saved["call"], saved["step"])
    assert "takeover" not in {e["event"] for e in read_events(store)[before:]}
