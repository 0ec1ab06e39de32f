"""What a report reads: a config (through its manifest) or a store folder, turned into one `ReportData`
with the planned-but-never-started cells added as ``missing`` rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtlprune.analysis import load_results
from mtlprune.analysis.load import BASE_COLUMNS
from mtlprune.spec.load import load_yaml
from mtlprune.spec.select import Selection
from mtlprune.store import DEFAULT_STORE
from mtlprune.store.manifest import MANIFEST, Manifest, read_manifest

MISSING = "missing"


def matrix_name(config: Path) -> str:
    """The ``name`` of a matrix config, read with yaml.safe_load and nothing else (no validation)."""
    try:
        data = load_yaml(config.read_text(encoding="utf-8"))  # duplicate keys refused, as `run` does
    except yaml.YAMLError as exc:
        raise ValueError(f"{config}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(
            f"{config}: not a text file (expected a matrix YAML or a result store folder)"
        ) from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config}: expected a mapping with a 'name' key (the matrix name), got {name!r}")
    return name


def resolve_source(
    source: str | Path, store: str | Path | None = None
) -> tuple[Path, list[Manifest], str | None]:
    """(store root, manifests, matrix name or None) for a config file or a store folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file or result store")
    if path.is_dir():
        if store is not None and Path(store).resolve() != path.resolve():
            raise ValueError(f"{path} is a result store, and --store names another one ({store}); give one")
        if not (path / "runs").is_dir():
            raise FileNotFoundError(f"{path}: not a result store (no runs/ folder in it)")
        manifests = [read_manifest(path, p.parent.name) for p in sorted(path.glob(f"*/{MANIFEST}"))]
        return path, manifests, None
    name = matrix_name(path)
    root = DEFAULT_STORE if store is None else Path(store)
    if not root.is_dir():
        raise FileNotFoundError(f"result store {root} does not exist (config {path}, matrix {name!r})")
    return root, [read_manifest(root, name)], name


def missing_rows(manifests: Iterable[Manifest], present: set[str]) -> list[dict[str, Any]]:
    """load_results-shaped rows for the planned cells that have no run folder (never started)."""
    rows, seen = [], set(present)
    for manifest in manifests:
        for cell in manifest.cells:
            if cell.run_id in seen:
                continue
            seen.add(cell.run_id)
            rows.append(
                {
                    "run_id": cell.run_id,
                    "dataset": cell.dataset,
                    "tasks": ",".join(cell.tasks),
                    "arch": cell.arch,
                    "width": cell.width,
                    "head_width": cell.head_width,
                    "method": cell.method,
                    "method_name": cell.method_name,
                    "target_sparsity": float(cell.target),
                    "seed": cell.seed,
                    "protocol": cell.protocol,
                    "status": MISSING,
                    "error": f"planned in {manifest.name}, never started (no run folder)",
                    "dense_run_id": cell.dense_run_id,
                }
            )
    return rows


@dataclass
class ReportData:
    """Everything a report shows, read from the store once."""

    title: str
    store: Path
    frame: pd.DataFrame
    dense: pd.DataFrame
    manifests: list[Manifest]
    published: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)


def collect(
    root: Path, manifests: list[Manifest], name: str | None, only: Selection | None = None
) -> ReportData:
    """Cells (with missing ones added), dense stages and published numbers for a report; ``only`` keeps
    the selected cells (and their dense stages)."""
    from mtlprune.analysis import load_published
    from mtlprune.analysis.dense_results import load_dense

    notes: list[str] = []
    planned = [cell for manifest in manifests for cell in manifest.cells]
    ids = manifests[0].cell_ids if name is not None else None
    frame = load_results(root, ids, planned=planned)
    missing = missing_rows(manifests, set(frame["run_id"]))
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
        frame = frame[[*BASE_COLUMNS, *(c for c in frame.columns if c not in BASE_COLUMNS)]]
    if frame.empty:
        raise ValueError(
            f"{root}: no cell to report (no run with a spec.json, nothing planned in a manifest)"
        )
    planned_dense = {d.run_id for m in manifests for d in m.dense}
    if only:
        frame = frame[[only.matches_record(row) for row in frame.to_dict("records")]].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"--only {only.describe()} selects no cell of {name or root}")
        planned_dense = set()  # only the selected cells' dense stages
    dense_ids = set(frame["dense_run_id"].dropna()) | planned_dense
    dense = load_dense(root, dense_ids, planned=[d for manifest in manifests for d in manifest.dense])
    try:
        published: pd.DataFrame | None = load_published()
    except (FileNotFoundError, ValueError) as exc:
        published = None
        notes.append(f"published numbers not shown: {exc}")
    title = f"Report: {name}" if name is not None else f"Report: store {root}"
    return ReportData(title, root, frame, dense, manifests, published, notes)
