"""Where, when and with what a result was produced: git commit, package versions, host, device, Slurm ids.

Stored beside every stage result so a number in a table can be traced back to the code and the machine
that made it. Nothing here imports torch at module level (the versions come from package metadata), and
nothing here raises when git is missing or the tree is not a checkout: a result is never lost because its
provenance is incomplete; the gap is recorded under ``notes`` instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import math
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # bench/<layer>/<module>.py
"""The directory holding the ``bench`` package: the repository whose commit a result records."""

PACKAGES = ("torch", "torchvision", "numpy", "pydantic", "pandas")
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
}
GIT_TIMEOUT_S = 10.0


def _git(root: Path, *args: str) -> str:
    """Run one git command in ``root``; raise RuntimeError with git's own message on any failure."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock while other stages of the matrix, or the
    # user, use the same checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise RuntimeError("git executable not found") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`git {' '.join(args)}` timed out after {GIT_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise RuntimeError(f"`git {' '.join(args)}` could not run: {exc}") from None
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()
        raise RuntimeError(f"`git {' '.join(args)}` failed: {message[0] if message else proc.returncode}")
    return proc.stdout.strip()


def git_state(root: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout containing ``root``.

    Returns ``{"commit": str | None, "dirty": bool | None, "note": str | None}``; ``note`` explains any
    None (not a checkout, no commit yet, git missing or hanging). Only tracked files count as dirty:
    untracked scratch files do not change the code that ran.
    """
    root = Path(root)
    if not root.is_dir():
        return {"commit": None, "dirty": None, "note": f"{root} is not a directory"}
    try:
        commit = _git(root, "rev-parse", "--verify", "HEAD")
    except RuntimeError as exc:
        return {"commit": None, "dirty": None, "note": f"no git commit for {root}: {exc}"}
    try:
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except RuntimeError as exc:
        return {"commit": commit, "dirty": None, "note": f"dirty state of {root} unknown: {exc}"}
    return {"commit": commit, "dirty": dirty, "note": None}


@functools.lru_cache(maxsize=1)
def _repo_git_state() -> tuple[str | None, bool | None, str | None]:
    """git_state of this repository, once per process (provenance is taken once per stage)."""
    state = git_state(REPO_ROOT)
    return state["commit"], state["dirty"], state["note"]


def package_versions() -> dict[str, str | None]:
    """Python and the key package versions from installed metadata (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def slurm_ids(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """The Slurm job / array ids of this process (all None outside Slurm); keys are always present."""
    env = os.environ if environ is None else environ
    return {key: env.get(var) or None for key, var in SLURM_VARS.items()}


def device_name(device: Any) -> str:
    """A readable device description, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``.

    torch is imported only for CUDA devices, so describing a CPU run costs nothing.
    """
    text = str(device)
    if not text.startswith("cuda"):
        return text
    import torch

    index = torch.device(text).index
    if index is None:
        index = torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def planning_provenance() -> dict[str, Any]:
    """Where and with what a matrix was planned (its manifest): :func:`provenance` plus the command line and
    the time it was written."""
    return {
        **provenance(),
        "command": " ".join(sys.argv),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def provenance(device: str | None = None) -> dict[str, Any]:
    """Everything needed to trace a result back to its code and machine (JSON-serialisable).

    ``device`` is the already-described device (see ``device_name``); ``notes`` maps a part name (``git``)
    to why that part is missing, and is empty when everything was found.
    """
    commit, dirty, git_note = _repo_git_state()
    notes: dict[str, str] = {}
    if git_note is not None:
        notes["git"] = git_note
    return {
        "commit": commit,
        "dirty": dirty,
        "packages": package_versions(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "slurm": slurm_ids(),
        "notes": notes,
    }


def _iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")


def timing(start: float, end: float) -> dict[str, Any]:
    """Start/end as ISO-8601 UTC strings (millisecond precision) plus the wall time in seconds.

    ``start`` and ``end`` are epoch seconds (``time.time()``); wall_s is computed from them unrounded.
    """
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"timing: {name} must be finite epoch seconds, got {value!r}")
    if end < start:
        raise ValueError(f"timing: end ({end!r}) is before start ({start!r})")
    return {"start": _iso_utc(start), "end": _iso_utc(end), "wall_s": float(end - start)}


BUILTIN_CODE = ("mtlprune",)
"""Top-level packages of this repository: their code is identified by the git commit (and, for results,
by SCHEMA_VERSION bumps when behaviour changes), not by a per-plugin source hash."""


def code_identity(cls: type) -> dict[str, Any]:
    """Where a plugin class's code lives and a sha256 over its source files.

    Hashed: the source file of every class in ``cls``'s MRO that belongs to the same top-level package as
    ``cls`` (a plugin's own base classes included; the benchmark's base classes and third-party libraries
    not). ``builtin`` says whether the class is part of this repository.
    """
    package = cls.__module__.split(".")[0]
    files: list[Path] = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] != package:
            continue
        source = inspect.getsourcefile(klass)
        if source is not None and Path(source) not in files:
            files.append(Path(source))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "builtin": package in BUILTIN_CODE,
        "sha256": digest.hexdigest(),
        "files": [p.name for p in files],
    }
