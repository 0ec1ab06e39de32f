"""Slurm through submitit: the local executor end to end (and a preemption), SlurmSpec, sbatch files.

The Slurm path itself is checked without a cluster: fake ``sbatch``/``srun`` executables on PATH record the
files submitit writes, so the test reads the real ``#SBATCH`` lines (resources, array cap, dependency).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from mtlprune.cli import main
from mtlprune.execution.events import read_events
from mtlprune.execution.locks import LOCK, read_lock
from mtlprune.execution.matrix import run_matrix
from mtlprune.execution.slurm import StageTask, make_executor, slurm_parameters, submit_matrix
from mtlprune.plan.stages import plan
from mtlprune.spec import ConfigError
from mtlprune.spec.models import SlurmSpec
from mtlprune.store import Store
from tests.helpers import SMALL, load_masks, tiny_matrix, tiny_matrix_dict


def _matrix(**overrides):
    return tiny_matrix(**{**SMALL, **overrides})


def _config(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(tiny_matrix_dict(**{**SMALL, **overrides})))
    return path


def _same_results(store: Store, reference: Store, stages) -> None:
    for stage in stages:
        assert store.result(stage.run_id).metrics == reference.result(stage.run_id).metrics, stage.label
        if stage.kind == "cell":
            ours, theirs = (
                load_masks(store.run_dir(stage.run_id)),
                load_masks(reference.run_dir(stage.run_id)),
            )
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """SMALL run by a plain in-process `run_matrix`: what every executor must reproduce."""
    store = Store(tmp_path_factory.mktemp("plain"))
    assert run_matrix(_matrix(), store, show_progress=False).failed == {}
    return store


# ---------------------------------------------------------------------------------------- local executor


@pytest.mark.slow
def test_submitit_local_executor_runs_every_stage_like_a_plain_run(tmp_path, plain, capsys):
    config = _config(tmp_path / "small.yaml")
    store = Store(tmp_path / "store")
    argv = ["run", str(config), "--store", str(store.root), "--executor", "submitit-local", "--time", "10"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    stages = plan(_matrix())
    events = read_events(store)
    submits = {e["run_id"]: e["job"] for e in events if e["event"] == "submit"}
    claims = [e for e in events if e["event"] == "claim"]
    assert set(submits) == {s.run_id for s in stages} and len(set(submits.values())) == 2
    assert sorted(e["run_id"] for e in claims) == sorted(s.run_id for s in stages)
    assert all(e["pid"] != os.getpid() for e in claims)  # run by the submitit jobs, not here
    dense_job, cell_job = submits[stages[0].run_id], submits[stages[1].run_id]
    assert (
        f"dense stages: 1 task(s) in job {dense_job}" in out
        and f"cell stages: 1 task(s) in job {cell_job}" in out
    )
    assert (store.root / "slurm" / dense_job / f"{dense_job}_0_log.out").is_file()
    _same_results(store, plain, stages)
    assert main([*argv, "--no-progress"]) == 0  # submitting again: nothing pending, nothing sent
    assert "nothing to submit" in capsys.readouterr().out
    assert len(read_events(store)) == len(events)


@pytest.mark.slow
def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    # Long enough to be caught mid-training; a checkpoint every 2 steps.
    train = {"steps": 40, "batch_size": 4, "lr": 0.003}
    runtime = {"device": "cpu", "num_threads": 1, "checkpoint_every": 2, "log_every": 1}
    matrix = _matrix(train=train, runtime=runtime)
    dense = plan(matrix)[0]
    store = Store(tmp_path / "store")
    spec = SlurmSpec(time="10")
    done = threading.Event()

    def submit() -> None:
        submit_matrix(matrix, store, executor="submitit-local", slurm=spec, echo=lambda _: None)
        done.set()

    worker = threading.Thread(target=submit)
    worker.start()
    run_dir = store.run_dir(dense.run_id)
    deadline = time.time() + 60
    while time.time() < deadline and _steps_logged(run_dir) < 6:  # past a checkpoint at step 2 or 4
        time.sleep(0.02)
    holder = read_lock(run_dir / LOCK)
    assert holder is not None and (run_dir / "checkpoint.pt").is_file(), "the dense stage never got going"
    os.kill(holder.pid, signal.SIGUSR2)  # what Slurm sends before a time limit or a preemption
    worker.join(timeout=120)
    assert done.is_set()
    events = [e for e in read_events(store) if e["run_id"] == dense.run_id]
    assert [e["event"] for e in events] == ["submit", "claim", "interrupted", "claim", "finish"]
    assert events[1]["pid"] == holder.pid and events[3]["pid"] != holder.pid  # a new process, same job
    assert events[1]["job"] == events[3]["job"]
    result = store.result(dense.run_id)
    assert result.resumed_from is not None and result.resumed_from.step > 0
    reference = Store(tmp_path / "reference")
    assert run_matrix(matrix, reference, show_progress=False).failed == {}
    _same_results(store, reference, plan(matrix))


def _steps_logged(run_dir: Path) -> int:
    try:
        return sum('"step"' in line for line in (run_dir / "log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_stage_task_checkpoint_resubmits_itself_with_the_same_stage():
    task = StageTask({"name": "x"}, "/store", ["my.plugin"], False, 123.0)
    delayed = task.checkpoint("abcdef0123456789")
    assert delayed.function is task and delayed.args == ("abcdef0123456789",) and delayed.kwargs == {}


# ----------------------------------------------------------------------------------------------- SlurmSpec


@pytest.mark.parametrize(
    ("time_limit", "minutes"),
    [("90", 90), ("4:00:00", 240), ("10:30", 11), ("1-12", 2160), ("1-12:30", 2190), ("2-0:0:1", 2881)],
)
def test_slurm_time_limits_in_slurm_format(time_limit, minutes):
    assert SlurmSpec(time=time_limit).timeout_min == minutes


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"time": "4h"}, "time '4h' is not a Slurm time limit"),
        ({"mem": "lots"}, "String should match pattern"),
        ({"gpus_per_task": -1}, "greater than or equal to 0"),
        ({"max_parallel": 0}, "greater than or equal to 1"),
        ({"extra": {"array": "0-3"}}, "extra sbatch option 'array' is set by the benchmark itself"),
        ({"extra": {"Mail Type": "END"}}, "must be a long option name like 'mail-type'"),
        ({"partion": "gpu"}, "unknown key 'partion'; did you mean 'partition'?"),
    ],
)
def test_slurm_spec_rejects_bad_values_with_a_clear_message(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("?", r"\?")):
        SlurmSpec(**fields)


def test_bad_slurm_settings_are_reported_with_their_config_key_or_flag(tmp_path, capsys):
    bad = tiny_matrix_dict(**{**SMALL, "runtime": {"device": "cpu", "slurm": {"time": "soon"}}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"runtime\.slurm\.time"):
        from mtlprune.spec import load_matrix

        load_matrix(path)
    config = _config(tmp_path / "small.yaml")
    assert (
        main(["run", str(config), "--store", str(tmp_path / "s"), "--executor", "slurm", "--time", "x"]) == 2
    )
    assert "--time: time 'x' is not a Slurm time limit" in capsys.readouterr().err
    assert main(["run", str(config), "--store", str(tmp_path / "s"), "--partition", "gpu"]) == 2
    assert (
        "--partition: Slurm resources apply to --executor slurm or submitit-local only"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------ sbatch, no cluster


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that records each submission file and answers with job ids 1001, 1002, ...; a no-op srun."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(( $(ls {record} | wc -l) + 1001 ))\n'
        f'cp "$1" {record}/$n.sh\n'
        'echo "Submitted batch job $n"\n'
    )  # fmt: skip
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755 | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


def _sbatch(record: Path, job: int) -> list[str]:
    return (record / f"{job}.sh").read_text().splitlines()


def test_sbatch_files_carry_the_resources_array_cap_and_dependency(fake_slurm, tmp_path, capsys):
    spec = {
        "partition": "gpu", "time": "1:30:00", "gpus_per_task": 2, "cpus_per_task": 16, "mem": "64G",
        "account": "proj", "qos": "high", "constraint": "a100", "max_parallel": 3,
        "setup": ["module load cuda"], "extra": {"mail-type": "END"},
    }  # fmt: skip
    matrix = _matrix(sparsities=[0.5, 0.7], methods=[{"name": "magnitude"}, {"name": "random"}],
                     runtime={"device": "cpu", "slurm": spec})  # fmt: skip
    store = Store(tmp_path / "store")
    submission = submit_matrix(matrix, store, executor="slurm")
    # One dense stage is a plain job (submitit sends a single task without --array), the cells an array.
    assert submission.jobs == {"dense": ["1001"], "cell": [f"1002_{i}" for i in range(4)]}
    assert submission.outcome is None  # queued: results come later
    dense_file, cell_file = _sbatch(fake_slurm, 1001), _sbatch(fake_slurm, 1002)
    for line in (
        "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G", "#SBATCH --account=proj", "#SBATCH --qos=high",
        "#SBATCH --constraint=a100", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120", "#SBATCH --mail-type=END", "module load cuda",
    ):  # fmt: skip
        assert line in dense_file and line in cell_file, line
    assert "#SBATCH --array=0-3%3" in cell_file and not any("--array" in line for line in dense_file)
    assert "#SBATCH --job-name=bench-tiny-dense" in dense_file
    assert "#SBATCH --dependency=afterany:1001" in cell_file
    assert not any(line.startswith("#SBATCH --dependency") for line in dense_file)
    assert any(line.startswith("export PYTHONPATH=") for line in dense_file)
    logs = (store.root / "slurm").resolve()
    assert f"#SBATCH --output={logs}/%j/%j_0_log.out" in dense_file  # one folder per job, or per array task
    assert f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out" in cell_file
    assert f"logs: {logs}/<job>_<task>/" in capsys.readouterr().out
    submitted = [e["run_id"] for e in read_events(store) if e["event"] == "submit"]
    assert submitted == [s.run_id for s in plan(matrix)]


def test_resubmission_skips_held_and_failed_stages_and_blocks_cells_of_a_failed_dense(fake_slurm, tmp_path):
    matrix = _matrix(sparsities=[0.5, 0.7])
    dense, *cells = plan(matrix)
    store = Store(tmp_path / "store")
    # A live worker holds the dense stage: only the cells go out, without a dependency (they wait for it).
    store.run_dir(dense.run_id).mkdir(parents=True)
    (store.run_dir(dense.run_id) / LOCK).write_text(
        json.dumps(
            {"host": "node1", "pid": 1, "claimed_at": time.time(), "heartbeat": time.time(), "token": "t"}
        )
    )
    first = submit_matrix(matrix, store, executor="slurm", echo=lambda _: None)
    assert first.jobs == {"cell": ["1001_0", "1001_1"]}
    assert not any(line.startswith("#SBATCH --dependency") for line in _sbatch(fake_slurm, 1001))
    # The dense stage failed: its cells are marked blocked here, nothing is queued for them.
    (store.run_dir(dense.run_id) / LOCK).unlink()
    store.write_status(
        dense.run_id, status="failed", kind="oom", error="OutOfMemoryError: CUDA", finished=0.0
    )
    second = submit_matrix(matrix, store, executor="slurm", echo=lambda _: None)
    assert second.jobs == {} and second.blocked == [c.run_id for c in cells]
    assert all(store.status_record(c.run_id).kind == "blocked" for c in cells)
    # --retry-failed: the dense stage and its blocked cells go out again, the cells after the dense array.
    third = submit_matrix(matrix, store, executor="slurm", retry_failed=True, echo=lambda _: None)
    assert third.jobs == {"dense": ["1002"], "cell": ["1003_0", "1003_1"]}
    assert "#SBATCH --dependency=afterany:1002" in _sbatch(fake_slurm, 1003)


def test_slurm_parameters_and_a_missing_cluster(tmp_path, monkeypatch):
    params = slurm_parameters(SlurmSpec(gpus_per_task=0, time="5"), "bench-x-cell")
    assert params["time"] == 5 and "gpus_per_node" not in params and params["job_name"] == "bench-x-cell"
    assert params["stderr_to_stdout"] is True and params["array_parallelism"] == 64
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    with pytest.raises(
        ValueError, match="--executor slurm needs a Slurm cluster .* --executor submitit-local"
    ):
        make_executor("slurm", tmp_path, SlurmSpec(), "x")
