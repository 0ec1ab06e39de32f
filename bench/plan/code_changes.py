"""A finished cell made by other code of its plugin method is never silently reused (docs/design.md).

Each cell records a sha256 of its plugin's source (``provenance.method_code``); before a run, the cells of
plugin methods whose source changed since are refused (:class:`CodeChanged`) or, with
``--recompute-changed``, set aside as ``result.superseded-<old sha>.json`` to be computed again. Built-in
methods are identified by the commit and SCHEMA_VERSION instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtlprune import registry
from mtlprune.spec import RunSpec
from mtlprune.store import Store

if TYPE_CHECKING:
    from mtlprune.plan.stages import Stage


class CodeChanged(ValueError):
    """Finished cells were made by other code of a plugin method than the code loaded now."""


@dataclass(frozen=True)
class ChangedCell:
    run_id: str
    method: str
    stored: str | None  # sha256 of the plugin's source when the cell ran (None: not recorded)
    current: str


def changed_cells(stages: list[Stage], store: Store) -> list[ChangedCell]:
    """Finished cells of plugin methods whose source changed since they ran (built-ins are identified by
    the commit and SCHEMA_VERSION instead)."""
    from mtlprune.store.provenance import code_identity

    current: dict[str, dict[str, Any]] = {}
    changed = []
    for stage in stages:
        spec = stage.spec
        if not isinstance(spec, RunSpec) or not store.is_done(stage.run_id):
            continue
        name = spec.method.name
        if name not in current:
            current[name] = code_identity(registry.METHODS.get(name))
        if current[name]["builtin"]:
            continue
        stored = store.result(stage.run_id).provenance.get("method_code", {}).get("sha256")
        if stored != current[name]["sha256"]:
            changed.append(ChangedCell(stage.run_id, name, stored, current[name]["sha256"]))
    return changed


SUPERSEDED = "result.superseded-{}.json"


def check_changed_code(stages: list[Stage], store: Store, recompute: bool = False) -> list[ChangedCell]:
    """Refuse to reuse cells made by other plugin code (:class:`CodeChanged`), or, with ``recompute``, set
    their results aside (``result.superseded-<old sha>.json``) so that this run computes them again."""
    changed = changed_cells(stages, store)
    if not changed:
        return []
    if not recompute:
        lines = [
            f"  {c.run_id}: method {c.method!r} ran with code {(c.stored or 'unrecorded')[:12]}, "
            f"the code is now {c.current[:12]}"
            for c in changed
        ]
        raise CodeChanged(
            f"{len(changed)} finished cell(s) were made by different code of their plugin method:\n"
            + "\n".join(lines)
            + "\nrun again with --recompute-changed to compute them with the current code (the old results "
            "are kept as result.superseded-<sha>.json), or restore the plugin's code"
        )
    for cell in changed:
        run_dir = store.run_dir(cell.run_id)
        (run_dir / "result.json").replace(run_dir / SUPERSEDED.format((cell.stored or "unrecorded")[:12]))
        store.write_status(cell.run_id, status="pending", superseded=cell.stored, finished=time.time())
    return changed
