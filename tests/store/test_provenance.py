"""Provenance: git state of a real temporary repository, Slurm ids, device names, timing golden values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtlprune.store import provenance as prov
from mtlprune.store.provenance import device_name, git_state, provenance, slurm_ids, timing

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git executable not installed")


def _git(root: Path, *args: str) -> str:
    config = [
        "-c",
        "user.name=Bench Test",
        "-c",
        "user.email=bench@example.org",
        "-c",
        "commit.gpgsign=false",
    ]
    proc = subprocess.run(["git", *config, *args], cwd=root, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory git never looks above, so an enclosing checkout cannot leak into the result."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    return work


@needs_git
def test_git_state_clean_then_dirty(isolated: Path) -> None:
    _git(isolated, "init", "-q")
    (isolated / "a.txt").write_text("one\n")
    _git(isolated, "add", "a.txt")
    _git(isolated, "commit", "-q", "-m", "first")
    head = _git(isolated, "rev-parse", "HEAD")
    assert len(head) == 40

    assert git_state(isolated) == {"commit": head, "dirty": False, "note": None}
    # an untracked file does not change the code that ran: still clean
    (isolated / "scratch.txt").write_text("x\n")
    assert git_state(isolated)["dirty"] is False
    # from a subdirectory: the commit of the enclosing checkout
    (isolated / "sub").mkdir()
    assert git_state(isolated / "sub")["commit"] == head

    (isolated / "a.txt").write_text("two\n")
    assert git_state(isolated) == {"commit": head, "dirty": True, "note": None}


@needs_git
def test_git_state_outside_a_repository(isolated: Path) -> None:
    state = git_state(isolated)
    assert state["commit"] is None and state["dirty"] is None
    assert str(isolated) in state["note"] and "git rev-parse" in state["note"]


@needs_git
def test_git_state_repository_without_commit(isolated: Path) -> None:
    _git(isolated, "init", "-q")
    state = git_state(isolated)
    assert state["commit"] is None and state["note"].startswith("no git commit")


def test_git_state_without_git_executable(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(isolated))  # no git on PATH
    state = git_state(isolated)
    assert state["commit"] is None and "git executable not found" in state["note"]


def test_git_state_missing_directory(tmp_path: Path) -> None:
    state = git_state(tmp_path / "absent")
    assert state == {"commit": None, "dirty": None, "note": f"{tmp_path / 'absent'} is not a directory"}


def test_provenance_reports_git_note_and_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "_repo_git_state", lambda: (None, None, "no git commit for /x: boom"))
    for var in prov.SLURM_VARS.values():
        monkeypatch.delenv(var, raising=False)
    record = provenance("cpu")
    assert record["commit"] is None and record["dirty"] is None
    assert record["notes"] == {"git": "no git commit for /x: boom"}
    assert record["device"] == "cpu"
    assert record["slurm"] == {"job_id": None, "array_job_id": None, "array_task_id": None}
    assert set(record["packages"]) == {"python", "torch", "torchvision", "numpy", "pydantic", "pandas"}
    assert record["packages"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert json.loads(json.dumps(record)) == record


def test_provenance_clean_state_has_no_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "_repo_git_state", lambda: ("a" * 40, False, None))
    record = provenance()
    assert (record["commit"], record["dirty"], record["notes"], record["device"]) == (
        "a" * 40,
        False,
        {},
        None,
    )


def test_repo_git_state_is_cached_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake(root: Path) -> dict:
        calls.append(root)
        return {"commit": "c" * 40, "dirty": True, "note": None}

    prov._repo_git_state.cache_clear()
    monkeypatch.setattr(prov, "git_state", fake)
    try:
        assert provenance("cpu")["commit"] == "c" * 40
        assert provenance("cpu")["dirty"] is True
        assert calls == [prov.REPO_ROOT]
    finally:
        prov._repo_git_state.cache_clear()


def test_package_versions_missing_package_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "PACKAGES", ("numpy", "no-such-package-xyz"))
    versions = prov.package_versions()
    assert versions["no-such-package-xyz"] is None
    import numpy

    assert versions["numpy"] == numpy.__version__


def test_slurm_ids_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert provenance("cpu")["slurm"] == {"job_id": "4242", "array_job_id": "4200", "array_task_id": "7"}
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "")
    assert slurm_ids() == {"job_id": "4242", "array_job_id": None, "array_task_id": None}
    assert slurm_ids({}) == {"job_id": None, "array_job_id": None, "array_task_id": None}


def test_device_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert device_name("cpu") == "cpu"
    assert device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Fake GPU {index}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert device_name("cuda:1") == "cuda:1 (Fake GPU 1)"
    assert device_name("cuda") == "cuda:3 (Fake GPU 3)"
    assert device_name(torch.device("cuda", 0)) == "cuda:0 (Fake GPU 0)"


def test_provenance_does_not_import_torch() -> None:
    code = (
        "import sys; from mtlprune.store.provenance import provenance, timing; "
        "provenance('cpu'); timing(0.0, 1.0); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=prov.REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_timing_golden() -> None:
    assert timing(1_700_000_000.0, 1_700_000_123.5) == {
        "start": "2023-11-14T22:13:20.000+00:00",
        "end": "2023-11-14T22:15:23.500+00:00",
        "wall_s": 123.5,
    }
    assert timing(0, 0) == {
        "start": "1970-01-01T00:00:00.000+00:00",
        "end": "1970-01-01T00:00:00.000+00:00",
        "wall_s": 0.0,
    }
    # crossing midnight UTC, sub-second start
    assert timing(86_399.25, 86_401.0) == {
        "start": "1970-01-01T23:59:59.250+00:00",
        "end": "1970-01-02T00:00:01.000+00:00",
        "wall_s": 1.75,
    }


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (10.0, 9.0, r"end \(9.0\) is before start \(10.0\)"),
        (float("nan"), 1.0, "start must be finite"),
        (0.0, float("inf"), "end must be finite"),
        ("0", 1.0, "start must be finite"),
        (True, 1.0, "start must be finite"),
    ],
)
def test_timing_rejects_bad_input(start: object, end: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        timing(start, end)  # type: ignore[arg-type]
