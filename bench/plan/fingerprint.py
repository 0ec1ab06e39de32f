"""The content fingerprint of an on-disk dataset: what a disk dataset contributes to run identity.

A run's identity must follow the data it reads, not the path it reads it from: the same files elsewhere keep
every run id, one changed label file changes them. The fingerprint is

    sha256(canonical JSON of {"format": FINGERPRINT_FORMAT, "files": [[path, size, sha256], ...]})

over the listing and every file a run reads (the dataset plugin's ``data_files``: POSIX paths relative to
the root, sorted), with the canonical JSON of bench/spec/identity.py (sorted keys, no spaces, ASCII).

Hashing a real dataset reads every byte once; the per-file digests are then cached in
``<store>/data/fingerprints/<sha256 of the resolved root>.json`` and reused while a file's size and mtime_ns
are unchanged, so a later call only stats the files. A file modified less than ``RACY_NS`` before the scan
that hashed it is hashed again next time (git's "racily clean" rule): an edit within the same timestamp
tick would otherwise leave size and mtime unchanged.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlprune.registry import DATASETS
from mtlprune.spec import DataSpec, MatrixSpec, canonical_json
from mtlprune.store import atomic_write_json

FINGERPRINT_FORMAT = "mtl-prunebench data fingerprint 1"
CACHE_FORMAT = 1
CACHE_DIR = Path("data") / "fingerprints"
RACY_NS = 2_000_000_000  # files modified this close to a scan are not trusted from the cache
SHOWN_DIFFERENCES = 5

__all__ = [
    "DataFingerprint",
    "DataFingerprintError",
    "FileRecord",
    "cache_path",
    "data_fingerprint",
    "file_digest",
    "fingerprint_digest",
    "identity_known",
    "resolve_data",
    "resolve_data_lenient",
]


class DataFingerprintError(ValueError):
    """The data cannot be fingerprinted (a missing root or file, a bad listing) or differs from the pin."""


@dataclass(frozen=True)
class FileRecord:
    """One hashed file: its path relative to the root, size, mtime_ns (for the cache) and sha256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class DataFingerprint:
    """A dataset root's fingerprint, the files it covers, and how many digests the cache served."""

    digest: str
    root: Path
    files: tuple[FileRecord, ...]
    cached: int
    recomputed: int
    previous_digest: str | None = None  # the cache's fingerprint before this call, to name what changed
    previous_files: tuple[FileRecord, ...] = ()

    @property
    def n_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        return (
            f"{len(self.files)} files, {self.n_bytes} bytes; {self.cached} digest(s) from the cache, "
            f"{self.recomputed} recomputed"
        )


def file_digest(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_digest(files: Iterable[tuple[str, int, str]]) -> str:
    """The fingerprint of (relative path, size, sha256) triples: the recipe in the module docstring."""
    payload = {"format": FINGERPRINT_FORMAT, "files": sorted([p, size, sha] for p, size, sha in files)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def cache_path(store_root: str | Path, root: Path) -> Path:
    """Where the per-file digests of ``root`` (already resolved) are cached in the store."""
    key = hashlib.sha256(str(root).encode()).hexdigest()
    return Path(store_root) / CACHE_DIR / f"{key}.json"


@dataclass(frozen=True)
class _Cache:
    fingerprint: str | None
    scanned_ns: int
    files: dict[str, FileRecord]


_NO_CACHE = _Cache(None, 0, {})


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_cache(path: Path | None, root: Path) -> _Cache:
    """The cache of ``root``; anything unreadable or malformed counts as no cache (it is only a speed-up)."""
    if path is None:
        return _NO_CACHE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _NO_CACHE
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CACHE_FORMAT
        or payload.get("root") != str(root)
        or not isinstance(payload.get("scanned_ns"), int)
        or not isinstance(payload.get("files"), dict)
    ):
        return _NO_CACHE
    files = {}
    for rel, entry in payload["files"].items():
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("mtime_ns"), int)
            and _is_hex64(entry.get("sha256"))
        ):
            files[rel] = FileRecord(rel, entry["size"], entry["mtime_ns"], entry["sha256"])
    fingerprint = payload.get("fingerprint")
    return _Cache(fingerprint if _is_hex64(fingerprint) else None, payload["scanned_ns"], files)


def _write_cache(
    path: Path, root: Path, dataset: str, digest: str, scanned_ns: int, files: tuple[FileRecord, ...]
) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "root": str(root),
        "dataset": dataset,
        "fingerprint": digest,
        "scanned_ns": scanned_ns,
        "files": {f.path: {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": f.sha256} for f in files},
    }
    try:
        atomic_write_json(path, payload)
    except OSError as exc:  # the fingerprint is right all the same; only the next call is slower
        warnings.warn(f"{path}: cannot write the data fingerprint cache ({exc})", stacklevel=3)


def data_fingerprint(dataset: str, root: str | Path, store_root: str | Path | None) -> DataFingerprint:
    """Fingerprint the ``dataset`` files under ``root``, cached in ``store_root`` (None: no cache).

    A missing root, listing or listed file, or a malformed listing, is a :class:`DataFingerprintError`
    naming it: nothing is skipped.
    """
    cls = DATASETS.get(dataset)
    if not callable(getattr(cls, "data_files", None)):
        raise DataFingerprintError(
            f"dataset {dataset!r} cannot be fingerprinted: its class has no data_files(root) listing the "
            "files a run reads, so it cannot be used with source: disk"
        )
    given = Path(root).expanduser()
    if not given.is_dir():
        raise DataFingerprintError(f"dataset root {given} is not a directory")
    resolved = given.resolve()
    try:
        listed = cls.data_files(resolved)
    except OSError as exc:
        raise DataFingerprintError(
            f"{resolved / cls.listing_name}: cannot read the listing ({exc})"
        ) from None
    except ValueError as exc:  # the loader's DataFormatError names the listing and the entry
        raise DataFingerprintError(str(exc)) from None
    cache_file = None if store_root is None else cache_path(store_root, resolved)
    cache = _read_cache(cache_file, resolved)
    scanned_ns = time.time_ns()
    records: list[FileRecord] = []
    cached = 0
    for rel in sorted(set(listed)):
        path = resolved / rel
        try:
            info = path.stat()
        except FileNotFoundError:
            raise DataFingerprintError(f"{path}: file listed in {cls.listing_name} does not exist") from None
        except OSError as exc:
            raise DataFingerprintError(f"{path}: cannot be read ({exc})") from None
        if not stat.S_ISREG(info.st_mode):
            raise DataFingerprintError(f"{path}: listed in {cls.listing_name} but not a regular file")
        old = cache.files.get(rel)
        if (
            old is not None
            and (old.size, old.mtime_ns) == (info.st_size, info.st_mtime_ns)
            and old.mtime_ns < cache.scanned_ns - RACY_NS
        ):
            records.append(old)
            cached += 1
            continue
        try:
            sha = file_digest(path)
        except OSError as exc:
            raise DataFingerprintError(f"{path}: cannot be read ({exc})") from None
        records.append(FileRecord(rel, info.st_size, info.st_mtime_ns, sha))
    files = tuple(records)
    digest = fingerprint_digest((f.path, f.size, f.sha256) for f in files)
    unchanged = cached == len(files) and set(cache.files) == {f.path for f in files}
    if cache_file is not None and not (unchanged and cache.fingerprint == digest):
        _write_cache(cache_file, resolved, dataset, digest, scanned_ns, files)
    return DataFingerprint(
        digest=digest,
        root=resolved,
        files=files,
        cached=cached,
        recomputed=len(files) - cached,
        previous_digest=cache.fingerprint,
        previous_files=tuple(cache.files.values()),
    )


def _differences(old: Iterable[FileRecord], new: Iterable[FileRecord]) -> list[str]:
    """Relative paths added, removed or changed in content between two file tables."""
    before = {f.path: (f.size, f.sha256) for f in old}
    after = {f.path: (f.size, f.sha256) for f in new}
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _mismatch(index: int, data: DataSpec, fp: DataFingerprint) -> DataFingerprintError:
    message = (
        f"datasets[{index}] ({data.dataset}): the data at {fp.root} has fingerprint {fp.digest}, but the "
        f"config pins fingerprint {data.fingerprint}"
    )
    if fp.previous_digest == data.fingerprint:  # the cache still describes the pinned data: name the files
        changed = _differences(fp.previous_files, fp.files)
        more = len(changed) - SHOWN_DIFFERENCES
        shown = ", ".join(changed[:SHOWN_DIFFERENCES]) + (f" and {more} more" if more > 0 else "")
        message += f"; files that differ from the pinned data: {shown}"
    return DataFingerprintError(
        message + ". Results of other data must not share run ids: restore the data, or pin the new "
        "fingerprint (or remove the pin) to start new runs"
    )


def _resolve(matrix: MatrixSpec, store_root: str | Path, strict: bool) -> tuple[MatrixSpec, dict[int, str]]:
    found: dict[tuple[str, str], DataFingerprint | DataFingerprintError] = {}
    datasets: list[DataSpec] = []
    unknown: dict[int, str] = {}
    for i, data in enumerate(matrix.datasets):
        if data.source != "disk":
            datasets.append(data)
            continue
        try:
            root = data.resolved_root()
        except ValueError as exc:  # an unset environment variable
            outcome: DataFingerprint | DataFingerprintError = DataFingerprintError(str(exc))
        else:
            key = (data.dataset, str(root))
            if key not in found:
                try:
                    found[key] = data_fingerprint(data.dataset, root, store_root)
                except DataFingerprintError as exc:
                    found[key] = exc
            outcome = found[key]
        if isinstance(outcome, DataFingerprintError):
            if strict:
                raise DataFingerprintError(
                    f"datasets[{i}] ({data.dataset}): cannot fingerprint the data that identifies its runs: "
                    f"{outcome}"
                ) from None
            if data.fingerprint is None:
                unknown[i] = str(outcome)
            datasets.append(data)  # a pinned fingerprint still identifies its runs
            continue
        if data.fingerprint is not None and data.fingerprint != outcome.digest:
            raise _mismatch(i, data, outcome)
        datasets.append(data.model_copy(update={"fingerprint": outcome.digest, "root": str(outcome.root)}))
    return matrix.model_copy(update={"datasets": datasets}), unknown


def resolve_data(matrix: MatrixSpec, store_root: str | Path) -> MatrixSpec:
    """``matrix`` with each disk dataset's fingerprint computed from its files and its root resolved.

    Run ids depend on the fingerprint, so this comes before any run id; the root becomes the absolute path
    that was fingerprinted, so workers read those files and each stage's spec.json records them. Data that
    cannot be fingerprinted, or that differs from a pinned fingerprint, is a :class:`DataFingerprintError`.
    """
    return _resolve(matrix, store_root, strict=True)[0]


def resolve_data_lenient(matrix: MatrixSpec, store_root: str | Path) -> tuple[MatrixSpec, dict[int, str]]:
    """As :func:`resolve_data`, for commands that only show ids: unreadable data is reported, not raised.

    Returns the matrix and, per dataset index whose identity stays unknown (unreadable and not pinned), why.
    A dataset whose data is unreadable but whose fingerprint is pinned keeps the pin. A mismatch with a pin
    still raises.
    """
    return _resolve(matrix, store_root, strict=False)


def identity_known(data: DataSpec) -> bool:
    """Whether ``data``'s run ids can be computed: synthetic data always, disk data with a fingerprint."""
    return data.source != "disk" or data.fingerprint is not None
