"""What a pruning method sees: the model, the target, the data, a budgeted finetune and mask helpers.

The runner builds one context per cell; a method drives its own recipe through it. Every mask goes through
`apply_masks`, which records it, so the runner can verify and store exactly what the method pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.models.mtl import MTLModel
from bench.sparsity import Masks, Scope, apply_masks, select_masks
from bench.spec import RunSpec, TrainSpec
from bench.train import train

Logger = Callable[[dict[str, Any]], None]


@dataclass
class MethodContext:
    model: MTLModel
    spec: RunSpec
    train_set: Any
    device: torch.device
    logger: Logger = lambda record: None
    masks: Masks | None = None
    val_set: Any = None
    num_workers: int = 0
    steps_used: int = 0
    selected_step: int | None = None
    _phase: str = field(default="prune", repr=False)

    @property
    def target(self) -> float:
        return self.spec.target_sparsity

    @property
    def seed(self) -> int:
        return self.spec.seed

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, salt): a method's own randomness, independent of training."""
        return torch.Generator().manual_seed(self.spec.seed * 7_919 + 104_729 + salt)

    def prunable(self) -> dict[str, nn.Parameter]:
        return self.model.prunable_parameters()

    def select_masks(self, scores: Mapping[str, Tensor], scope: Scope = "global") -> Masks:
        """Keep-masks removing exactly the target fraction of the lowest scores within `scope`."""
        return select_masks(scores, self.target, scope)

    def apply_masks(self, masks: Masks) -> None:
        apply_masks(self.prunable(), masks)
        self.masks = {n: m.detach().to(torch.bool).cpu() for n, m in masks.items()}

    def finetune(self, spec: TrainSpec | None = None) -> int:
        """Train with the current masks held fixed, on the cell's finetune budget unless `spec` is given."""
        spec = spec or self.spec.finetune
        phase = "finetune"

        def on_step(step: int, scalars: dict[str, float]) -> None:
            self.logger({"phase": phase, "step": step, **scalars})

        outcome = train(
            self.model,
            dataset_name=self.spec.data.dataset,
            train_set=self.train_set,
            spec=spec,
            seed=self.spec.seed + 1,
            device=self.device,
            masks=self.masks,
            on_step=on_step,
            val_set=self.val_set,
            selection=self.spec.eval.selection,
            val_every=self.spec.eval.val_every,
            num_workers=self.num_workers,
            protocol=self.spec.eval.protocol,
        )
        self.steps_used += outcome.steps
        self.selected_step = self.steps_used - outcome.steps + outcome.selected_step
        return outcome.steps

    def log(self, **scalars: Any) -> None:
        self.logger({"phase": self._phase, **scalars})
