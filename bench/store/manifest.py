"""The torch-free manifest of a matrix: ``<store>/<matrix name>/matrix.json``.

Validating a matrix config needs the method registry, and the registry imports the method plugins (and
torch). `mtlprune report` must run on a laptop with the results alone, so `mtlprune run` writes
down what the matrix expands to (the spec dump, the dense stages and the cells with their labels, plus
where and with what it was planned); the report then reads this file instead of the config, and a cell
listed here without a result shows as missing rather than vanishing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlprune.store import Store, atomic_write_json, read_json
from mtlprune.store.provenance import planning_provenance
from mtlprune.store.records import RECORD_FORMAT, Manifest, parse_manifest

if TYPE_CHECKING:
    from mtlprune.spec import MatrixSpec

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "Manifest",
    "manifest_path",
    "read_manifest",
    "save_manifest",
    "write_manifest",
]

MANIFEST = "matrix.json"
MANIFEST_FORMAT = RECORD_FORMAT  # the manifest is a typed record (mtlprune.store.records.Manifest)


def manifest_path(store_root: str | Path, name: str) -> Path:
    return Path(store_root) / name / MANIFEST


def _manifest_payload(matrix: MatrixSpec, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    dense = [
        {
            "run_id": d.run_id,
            "dataset": d.data.dataset,
            "tasks": list(d.data.tasks),
            "arch": d.arch.name,
            "width": d.arch.width,
            "head_width": d.arch.head_width,
            "seed": d.seed,
            "protocol": d.eval.protocol,
        }
        for d in matrix.dense_stages()
    ]
    cells = [
        {
            "run_id": c.run_id,
            "dense_run_id": c.dense().run_id,
            "dataset": c.data.dataset,
            "tasks": list(c.data.tasks),
            "arch": c.arch.name,
            "width": c.arch.width,
            "head_width": c.arch.head_width,
            "method": c.method.label,
            "method_name": c.method.name,
            "target": c.target_sparsity,
            "seed": c.seed,
            "protocol": c.eval.protocol,
        }
        for c in matrix.expand()
    ]
    return {
        "format": MANIFEST_FORMAT,
        "name": matrix.name,
        "spec": matrix.model_dump(mode="json"),
        "dense": dense,
        "cells": cells,
        "overrides": list(overrides),
        "provenance": planning_provenance(),
    }


def save_manifest(store_root: str | Path, payload: dict[str, Any]) -> Path:
    """Validate and write a manifest payload atomically (also used by tests to fake a planned matrix)."""
    manifest = parse_manifest(payload, Path("<payload>"))
    path = manifest_path(store_root, manifest.name)
    atomic_write_json(path, manifest.payload())
    return path


def write_manifest(
    matrix: MatrixSpec, store: Store | str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> Path:
    """``<store>/<matrix.name>/matrix.json``: spec dump (overrides applied), dense stages and cells with
    labels, the command-line overrides, provenance."""
    root = store.root if isinstance(store, Store) else Path(store)
    return save_manifest(root, _manifest_payload(matrix, overrides))


def read_manifest(store_root: str | Path, name: str) -> Manifest:
    """The manifest of matrix ``name`` in the store; a clear error when it was never planned there."""
    path = manifest_path(store_root, name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no manifest of matrix {name!r} in store {store_root} "
            f"(`mtlprune plan CONFIG --store {store_root}` or `mtlprune run` writes it)"
        )
    return parse_manifest(read_json(path), path)
