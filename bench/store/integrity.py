"""Whether a stage's result is intact, decided from the files that carry it, and what to do when it is not.

A stage is done when its ``result.json`` is a valid record of that stage and every file the result records
(``files``: the checkpoints and masks, with size, mtime and sha256) is there and unchanged; never from
``status.json`` alone. A damaged result is *set aside* (moved under ``runs/<id>/damaged/<time>/`` with a
note of why), never deleted, so that the next ``mtlprune run`` recomputes the stage. ``check_store`` is
``mtlprune store check``: every record and file of a store, each problem with its path and what ``run``
does about it (docs/design.md, "Store integrity").

Checks come in two depths. The *shallow* one (every ``Store.is_done``) parses the result and compares each
recorded file's size and mtime, hashing it only when the mtime moved (a copied store; a file rewritten in
place); the *deep* one (``store check``) hashes every recorded file. A result written before files were
recorded (``files`` absent) has its archives' zip CRCs tested instead (checkpoints and ``.npz`` masks are zip
files), and a dense stage must have its ``model.pt``. Digests and CRC verdicts are cached per process by
(path, inode, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlprune.store.layout import (
    CHECKPOINT,
    CHECKPOINT_INFO,
    RESULT,
    SPEC,
    STATUS,
    atomic_write_json,
    read_json,
)
from mtlprune.store.records import StageResult, StatusRecord, StoredFile, parse_result, parse_status

ARTEFACTS = ("init.pt", "rewind.pt", "model.pt", "masks.npz", "task_masks.npz")
"""Files a stage writes that its result stands on (the dense checkpoints cells start from, the masks)."""
DAMAGED = "damaged"
CHUNK = 1 << 20

Action = Literal["recompute", "keep", "person"]
LEFTOVER = "safe to delete while no run writes to this store"
ACTIONS: dict[str, str] = {
    "recompute": "`mtlprune run` sets it aside and recomputes the stage",
    "keep": "kept; nothing is recomputed",
    "person": "needs a person",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a store: the file, what is wrong with it, and what ``mtlprune run`` does."""

    path: Path
    what: str
    action: Action
    run_id: str | None = None
    detail: str = ""  # how the action plays out, when it needs saying

    def line(self) -> str:
        how = ACTIONS[self.action] + (f" ({self.detail})" if self.detail else "")
        return f"{self.path}: {self.what} → {how}"

    def payload(self) -> dict[str, Any]:
        return {"path": str(self.path), "what": self.what, "action": self.action, "detail": self.detail}


@dataclass
class StageFiles:
    """What a stage's folder holds, read once: the result (None when absent or damaged) and the problems."""

    run_id: str
    result: StageResult | None = None
    status: str = "pending"  # done | damaged | failed | running | pending
    problems: list[Problem] = field(default_factory=list)
    record: StatusRecord | None = None  # status.json, when readable

    @property
    def damaged(self) -> list[Problem]:
        """The problems that make the stage not done (its result must be recomputed)."""
        return [p for p in self.problems if p.action == "recompute"]

    @property
    def error(self) -> str | None:
        """What a reader shows for a stage without a result: each damaged file and why, or the failure."""
        if self.status == DAMAGED:
            return "; ".join(f"{p.path}: {p.what}" for p in self.problems if p.action != "keep")
        return None if self.result is not None or self.record is None else self.record.error


# ------------------------------------------------------------------------------------------- digests


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), cached per process by (path, inode, size, mtime)."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def stored_file(path: Path) -> StoredFile:
    """The record of a file as it is now (what a result keeps of the files it stands on)."""
    stat = path.stat()
    return StoredFile(bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256_of(path))


def record_artefacts(run_dir: Path) -> dict[str, StoredFile]:
    """The :data:`ARTEFACTS` present in ``run_dir``, recorded (called just before the result is written)."""
    return {name: stored_file(run_dir / name) for name in ARTEFACTS if (run_dir / name).is_file()}


def _file_problem(path: Path, recorded: StoredFile, deep: bool) -> str | None:
    """Why ``path`` is not the file the result recorded (None when it is)."""
    if not path.is_file():
        return "missing (the result records it)"
    stat = path.stat()
    if stat.st_size != recorded.bytes:
        return f"{stat.st_size} bytes, but the result recorded {recorded.bytes} (truncated or replaced)"
    moved = deep or stat.st_mtime_ns != recorded.mtime_ns  # only then is the content hashed
    if moved and sha256_of(path) != recorded.sha256:
        return "content differs from the sha256 the result recorded (garbled or replaced)"
    return None


_ZIP_CHECKS: dict[tuple[str, int, int, int], str | None] = {}


def _zip_problem(path: Path) -> str | None:
    """Checkpoints (torch.save) and masks (.npz) are zip archives: their CRCs say whether they are intact
    (for results that did not record digests; cached per process like the digests)."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _ZIP_CHECKS:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            _ZIP_CHECKS[key] = None if bad is None else f"archive member {bad} fails its CRC check (garbled)"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            _ZIP_CHECKS[key] = f"not a readable archive ({exc})"
    return _ZIP_CHECKS[key]


# ---------------------------------------------------------------------------------------- one stage


def inspect_stage(run_dir: Path, deep: bool = False) -> StageFiles:
    """What ``run_dir`` holds: done (with its result), damaged (with why), or the status it records."""
    run_dir = Path(run_dir)
    state = StageFiles(run_dir.name)
    if not run_dir.is_dir():
        if run_dir.exists():
            state.status = DAMAGED
            state.problems.append(
                Problem(run_dir, "is a file, expected a stage folder", "person", run_dir.name)
            )
        return state
    result_path = run_dir / RESULT
    status = _read_status(run_dir, state)
    if result_path.is_file():
        _check_result(run_dir, state, deep)
    elif status == "done":
        state.problems.append(
            Problem(result_path, "missing, though status.json says done", "recompute", state.run_id)
        )
    elif status is not None:
        state.status = status
    if state.result is None and any(p.action != "keep" for p in state.problems):
        state.status = DAMAGED
    if state.result is not None:
        _check_spec(run_dir, state)
    return state


def _read_status(run_dir: Path, state: StageFiles) -> str | None:
    path = run_dir / STATUS
    if not path.is_file():
        return None
    try:
        state.record = parse_status(read_json(path), path)
        return state.record.status
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        action: Action = "keep" if (run_dir / RESULT).is_file() else "recompute"
        detail = "the result decides; the next run rewrites it" if action == "keep" else ""
        state.problems.append(
            Problem(path, f"unreadable ({_short(exc, path)})", action, state.run_id, detail)
        )
        return None


def _check_result(run_dir: Path, state: StageFiles, deep: bool) -> None:
    path = run_dir / RESULT
    try:
        result = parse_result(read_json(path), path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        state.problems.append(Problem(path, _short(exc, path), "recompute", state.run_id))
        return
    if result.run_id != state.run_id:
        what = f"records stage {result.run_id}, but lies in the folder of {state.run_id}"
        state.problems.append(Problem(path, what, "person", state.run_id))
        return
    bad = []
    for name, recorded in (result.files or {}).items():
        why = _file_problem(run_dir / name, recorded, deep)
        if why is not None:
            bad.append(Problem(run_dir / name, why, "recompute", state.run_id))
    if result.files is None:  # written before files were recorded: what can be checked without the record
        if result.stage == "dense" and not (run_dir / "model.pt").is_file():
            what = "missing (every cell starts from it)"
            bad.append(Problem(run_dir / "model.pt", what, "recompute", state.run_id))
        for name in ARTEFACTS:
            if (run_dir / name).is_file() and (why := _zip_problem(run_dir / name)) is not None:
                bad.append(Problem(run_dir / name, why, "recompute", state.run_id))
    state.problems.extend(bad)
    if not bad:
        state.result, state.status = result, "done"


def _check_spec(run_dir: Path, state: StageFiles) -> None:
    path = run_dir / SPEC
    if not path.is_file():
        what = "missing"
    else:
        try:
            payload = read_json(path)
            if isinstance(payload, dict) and payload.get("run_id") == state.run_id and "spec" in payload:
                return
            what = "not the spec record of this stage"
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            what = f"unreadable ({_short(exc, path)})"
    detail = "the result stays; the next `mtlprune run` of its matrix writes the spec again"
    state.problems.append(Problem(path, what, "keep", state.run_id, detail))


def _short(exc: BaseException, path: Path) -> str:
    """The error without the path it already names."""
    return str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}:").strip()


# ----------------------------------------------------------------------------------------- set aside


def set_aside(run_dir: Path, problems: list[Problem]) -> Path | None:
    """Move a damaged result and the files it stands on under ``run_dir/damaged/<time>/`` with a note of
    why (``problems.json``), so that the stage runs again from scratch; nothing is deleted. Returns the
    folder (None when there was nothing to move)."""
    run_dir = Path(run_dir)
    names = [RESULT, STATUS, *ARTEFACTS]
    present = [name for name in names if (run_dir / name).is_file()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir / DAMAGED / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir / DAMAGED / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    atomic_write_json(
        target / "problems.json",
        {"set_aside": time.time(), "problems": [p.payload() for p in problems], "files": present},
    )
    for name in present:
        shutil.move(str(run_dir / name), str(target / name))
    return target


# --------------------------------------------------------------------------------------- whole store


def check_store(root: Path, deep: bool = True) -> list[Problem]:
    """Every problem of the store at ``root`` (``mtlprune store check``), in a stable order."""
    from mtlprune.store.records import parse_manifest

    root = Path(root)
    problems = store_root_problems(root, write=False)
    if problems:
        return problems
    runs = root / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        if run_dir.name.startswith("."):
            continue
        state = inspect_stage(run_dir, deep=deep)
        problems += state.problems
        problems += _leftovers(run_dir, state)
    for path in sorted(root.glob("*/matrix.json")):
        try:
            parse_manifest(read_json(path), path)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            detail = "the next `mtlprune run` of the matrix writes it again; `report` needs it"
            problems.append(Problem(path, f"unreadable ({_short(exc, path)})", "keep", None, detail))
    events = root / "events.jsonl"
    if events.is_file():
        for number, line in bad_event_lines(events):
            what = f"line {number} is not a JSON record ({line[:60]!r})"
            detail = "readers skip it with a warning; delete the line to clear this"
            problems.append(Problem(events, what, "person", None, detail))
    return problems


def _leftovers(run_dir: Path, state: StageFiles) -> list[Problem]:
    """Files a killed process left behind: temp files of interrupted writes, a finished stage's checkpoint."""
    found = [
        Problem(path, "temp file of an interrupted write", "person", state.run_id, LEFTOVER)
        for path in sorted(run_dir.glob(".*.tmp"))
    ]
    if state.status == "done":
        found += [
            Problem(run_dir / name, "checkpoint of a finished stage", "person", state.run_id, LEFTOVER)
            for name in (CHECKPOINT, CHECKPOINT_INFO)
            if (run_dir / name).is_file()
        ]
    return found


def bad_event_lines(path: Path) -> list[tuple[int, str]]:
    """The complete lines of an events log that are not JSON objects (number, text)."""
    out = []
    data = path.read_bytes()
    for number, raw in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            ok = isinstance(json.loads(raw), dict)
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            out.append((number, raw.decode("utf-8", "replace")))
    return out


def store_root_problems(root: Path, write: bool) -> list[Problem]:
    """Why ``root`` cannot be used as a store (read, or written when ``write``): empty when it can."""
    root = Path(root)
    runs = root / "runs"
    if root.exists() and not root.is_dir():
        return [
            Problem(root, "is a file, expected a store folder (or a path that does not exist yet)", "person")
        ]
    if runs.exists() and not runs.is_dir():
        return [Problem(runs, "is a file, expected the folder of stage results", "person")]
    if not write:
        if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
            return [Problem(root, "is not readable by this user", "person")]
        return []
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    for path in (existing, runs) if runs.is_dir() else (existing,):
        if not os.access(path, os.W_OK | os.X_OK):
            return [Problem(path, "is not writable by this user (a read-only store?)", "person")]
    return []
