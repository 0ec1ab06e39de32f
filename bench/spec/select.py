"""``--only method=magnitude,sparsity=0.9``: which stages of a matrix a command works on.

A clause is ``KEY=VALUE``; clauses are separated by commas (or given in several ``--only`` options).
Clauses with the same key are alternatives (``method=snip,method=grasp``), clauses with different keys must
all hold. A key is a short name (:data:`ALIASES`) or any field path of a stage's spec as ``spec.json``
stores it (``arch.width``, ``finetune.lr``, ``method.params.ramp_fraction``). Values are read as YAML and
numbers compare as numbers (``sparsity=0.90`` selects target 0.9); a list field (``tasks``) matches when it
holds the value.

A cell is selected when every clause holds for it. A dense stage is selected when a selected cell trains
from it, or when every clause names a field the dense stage has and holds for it (``--only seed=1`` runs
seed 1's dense stages even in a matrix whose cells are filtered away elsewhere). The control row
(``dense-finetune``, target 0) is a cell like any other: ``--only sparsity=0.9`` leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mtlprune.spec.models import DenseSpec, RunSpec

# Short keys → the spec paths they stand for (any one may match).
ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("method.label", "method.name"),
    "sparsity": ("target_sparsity",),
    "target": ("target_sparsity",),
    "dataset": ("data.dataset",),
    "tasks": ("data.tasks",),
    "arch": ("arch.name",),
    "width": ("arch.width",),
    "protocol": ("eval.protocol",),
    "seed": ("seed",),
    "stage": ("stage",),
}
# The same short keys as columns of a stored-result row or a manifest entry (what `report` filters).
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "method": ("method", "method_name"),
    "sparsity": ("target", "target_sparsity"),
    "target": ("target", "target_sparsity"),
    "dataset": ("dataset",),
    "tasks": ("tasks",),
    "arch": ("arch",),
    "width": ("width",),
    "protocol": ("protocol",),
    "seed": ("seed",),
}
_MISSING = object()


class SelectionError(ValueError):
    """An ``--only`` clause that cannot be read, names no field, or selects nothing."""


def _values_equal(have: Any, want: Any) -> bool:
    if isinstance(have, list | tuple):
        return any(_values_equal(item, want) for item in have)
    numbers = (int, float)
    if isinstance(have, numbers) and isinstance(want, numbers) and not isinstance(have, bool):
        return not isinstance(want, bool) and math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)
    return str(have) == str(want)


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


@dataclass(frozen=True)
class Selection:
    """Parsed ``--only`` clauses: key → the values any of which may match."""

    clauses: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str] | None) -> Selection:
        wanted: dict[str, list[Any]] = {}
        for text in texts or ():
            for clause in text.split(","):
                key, sep, raw = clause.partition("=")
                if not sep or not key.strip() or not raw.strip():
                    raise SelectionError(
                        f"--only {text!r}: clause {clause!r} is not KEY=VALUE "
                        "(e.g. --only method=magnitude,sparsity=0.9)"
                    )
                try:
                    value = yaml.safe_load(raw.strip())
                except yaml.YAMLError:
                    value = raw.strip()
                wanted.setdefault(key.strip(), []).append(value)
        return cls(tuple((key, tuple(values)) for key, values in wanted.items()))

    def __bool__(self) -> bool:
        return bool(self.clauses)

    def describe(self) -> str:
        return ",".join(f"{key}={value}" for key, values in self.clauses for value in values)

    # ------------------------------------------------------------------------------------------ specs

    @staticmethod
    def _tree(spec: DenseSpec | RunSpec) -> dict[str, Any]:
        tree = spec.model_dump(mode="json")
        if "method" in tree:
            tree["method"]["label"] = spec.method.label  # type: ignore[union-attr]
        return tree

    @staticmethod
    def _found(tree: Mapping[str, Any], key: str) -> list[Any]:
        """The stage's values of ``key`` (an alias may name several fields); empty when it has none."""
        return [v for v in (_lookup(tree, p) for p in ALIASES.get(key, (key,))) if v is not _MISSING]

    def _holds(self, tree: Mapping[str, Any], key: str, values: tuple[Any, ...]) -> bool | None:
        """Whether the clause holds for the stage; None when the stage has no such field."""
        found = self._found(tree, key)
        if not found:
            return None
        return any(_values_equal(have, want) for have in found for want in values)

    def select(
        self, dense: list[DenseSpec], cells: list[RunSpec], matrix_name: str = "the matrix"
    ) -> tuple[list[DenseSpec], list[RunSpec]]:
        """The selected dense stages and cells, each in its given order."""
        if not self:
            return dense, cells
        cell_trees = [self._tree(c) for c in cells]
        dense_trees = [self._tree(d) for d in dense]
        for key, _ in self.clauses:
            if not any(self._found(t, key) for t in [*cell_trees, *dense_trees]):
                short = ", ".join(sorted(ALIASES))
                raise SelectionError(
                    f"--only {key}=...: no stage of {matrix_name} has a field {key!r} (short keys: {short}; "
                    "or a spec path such as arch.width or finetune.lr)"
                )
        kept_cells = [
            c
            for c, t in zip(cells, cell_trees, strict=True)
            if all(self._holds(t, k, v) for k, v in self.clauses)
        ]
        needed = {d.run_id for c in kept_cells for d in c.needs()}
        kept_dense = [
            d
            for d, t in zip(dense, dense_trees, strict=True)
            if d.run_id in needed or all(self._holds(t, k, v) for k, v in self.clauses)
        ]
        if not kept_cells and not kept_dense:
            raise SelectionError(f"--only {self.describe()} selects no stage of {matrix_name}")
        return kept_dense, kept_cells

    # ---------------------------------------------------------------------------------------- records

    def check_record_keys(self) -> None:
        """Stored-result filters know only the short keys (a result row does not hold the whole spec)."""
        for key, _ in self.clauses:
            if key not in RECORD_COLUMNS:
                raise SelectionError(
                    f"--only {key}=...: the report filters on {', '.join(sorted(RECORD_COLUMNS))}, "
                    f"not {key!r}"
                )

    def matches_record(self, record: Mapping[str, Any]) -> bool:
        """Whether a result row / manifest entry (keys as in :data:`RECORD_COLUMNS`) is selected."""
        for key, values in self.clauses:
            found = [record[c] for c in RECORD_COLUMNS[key] if c in record]
            if key == "tasks":  # a result row joins its tasks with commas
                found = [v.split(",") if isinstance(v, str) else v for v in found]
            if not any(_values_equal(have, want) for have in found for want in values):
                return False
        return True
