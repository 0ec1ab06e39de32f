"""The matrix as stages (docs/design.md, "Stages"): one dense stage per (data, arch, train, eval, seed),
shared by every method and sparsity, then one cell per RunSpec, which needs its dense stage (and any dense
stage its method asks for, such as ECS's single-task base: ``Stage.requires``).

`Stage` is the one stage type: the engine runs it, the executors schedule it, the estimate prices it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from functools import cached_property

from mtlprune.spec import DenseSpec, MatrixSpec, RunSpec
from mtlprune.spec.select import Selection

KINDS = ("dense", "cell")


@dataclass(frozen=True)
class Stage:
    """One node of the stage graph: a dense stage, or a cell that ``needs`` its dense stage."""

    spec: DenseSpec | RunSpec

    @property
    def kind(self) -> str:
        return "cell" if isinstance(self.spec, RunSpec) else "dense"

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @cached_property
    def needs(self) -> str | None:
        """The run id of the cell's shared dense stage, its ΔT reference (None for a dense stage)."""
        return self.spec.dense().run_id if isinstance(self.spec, RunSpec) else None

    @cached_property
    def requires(self) -> tuple[str, ...]:
        """Run ids of every dense stage that must be done before the cell runs: its shared dense stage, then
        those its method asks for (``PruningMethod.extra_stages``); empty for a dense stage."""
        return tuple(d.run_id for d in self.spec.needs()) if isinstance(self.spec, RunSpec) else ()

    @property
    def label(self) -> str:
        s = self.spec
        if isinstance(s, RunSpec):
            return f"{s.method.label}@{s.target_sparsity:g} seed {s.seed}"
        return f"{s.data.dataset} {s.arch.name} seed {s.seed}"

    @property
    def total_steps(self) -> int | None:
        """The steps a progress bar counts to: a dense stage's training; None for a cell (its method
        decides)."""
        return self.spec.train.steps if isinstance(self.spec, DenseSpec) else None

    @property
    def cost_key(self) -> tuple[Hashable, ...]:
        """What the stage's wall time is expected to depend on (mtlprune.plan.estimate). It starts with
        (dataset, arch, width), the fallback match; then head width and training steps for a dense stage,
        method label, training and finetuning steps for a cell."""
        s = self.spec
        head = (s.data.dataset, s.arch.name, s.arch.width)
        if isinstance(s, RunSpec):
            return (*head, s.method.label, s.train.steps, s.finetune.steps)
        return (*head, s.arch.head_width, s.train.steps)


def plan(matrix: MatrixSpec, only: Selection | None = None) -> list[Stage]:
    """The matrix's dense stages, then its cells, each in plan order; ``only`` keeps the selected ones."""
    dense, cells = matrix.dense_stages(), matrix.expand()
    if only:
        dense, cells = only.select(dense, cells, f"matrix {matrix.name!r}")
    return [Stage(spec) for spec in [*dense, *cells]]
