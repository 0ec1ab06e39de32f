"""What a pruning method sees (`MethodContext`) and what the engine keeps of a cell (`TrainingSession`).

The engine builds one session and one context per cell; a method drives its own recipe through the context
(docs/adding_a_method.md). The context's facts are read-only: every mask goes through
:meth:`MethodContext.apply_masks` (or a training callback's ``runner.set_masks``), which records it in the
session, so the engine can verify and store exactly what the method pruned. Every optimizer step goes
through :meth:`MethodContext.train`, which counts it, so budgets are recorded, never claimed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from mtlprune.engine.build import load_state
from mtlprune.engine.checkpoint import StageCheckpoint
from mtlprune.engine.data import batch_stream
from mtlprune.engine.divergence import DivergenceGuard
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import Masks, Scope, apply_masks, select_masks
from mtlprune.engine.tasks import make_losses
from mtlprune.engine.train import Loading, Optimization, TrainCallback, TrainingData, to_device, train
from mtlprune.plan.compute import fairness_steps
from mtlprune.spec import DenseSpec, RunSpec, TrainSpec

Logger = Callable[[dict[str, Any]], None]

DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def scoring_copy(model: nn.Module) -> nn.Module:
    """A deep copy in train mode (BN batch statistics) with dropout off: deterministic, original untouched.

    Scoring passes (saliency, Taylor, per-task gradients) must not draw dropout masks (the score would be
    a random draw) nor update the model's BN running statistics (the pruned model would start from other
    weights than the dense one); a copy with dropout off does neither.
    """
    net = copy.deepcopy(model)
    net.train()
    for module in net.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.eval()
    return net


@dataclass
class TrainingSession:
    """The engine's side of a cell, which the method never touches: where training logs and checkpoints go,
    how batches are loaded, and the running account of what the method has pruned, spent and recorded (the
    cell's result is written from it, and its checkpoint carries it)."""

    logger: Logger = lambda record: None
    checkpoint: StageCheckpoint | None = None  # the cell's in-stage checkpoint (resume after a kill)
    loading: Loading = field(default_factory=Loading)  # how batches reach the device
    # The untrained network's task losses (the dense stage's step 0): every ctx.train call fails as
    # diverged when a task loss stays above 10x its value (mtlprune.engine.divergence); None: no loss bound.
    initial_losses: dict[str, float] | None = None
    masks: Masks | None = None  # the masks held now (ctx.apply_masks, a training callback's set_masks)
    steps_used: int = 0
    selected_step: int | None = None
    recorded: dict[str, Any] = field(default_factory=dict)  # result.json "method_state"
    task_masks: dict[str, Masks] = field(default_factory=dict)  # task → its own keep-masks (task_masks.npz)
    phase: str = "prune"  # what ctx.log records are tagged with: the training call's phase, else "prune"
    calls: int = 0  # ctx.train calls so far (a resumed cell skips those its checkpoint already holds)

    def owner_state(self) -> dict[str, Any]:
        """The session's part of a checkpoint: what the method has pruned, spent and recorded so far."""
        return {
            "calls": self.calls,
            "phase": self.phase,
            "masks": self.masks,
            "steps_used": self.steps_used,
            "selected_step": self.selected_step,
            "recorded": dict(self.recorded),
            "task_masks": self.task_masks,
        }

    def load_owner_state(self, state: Mapping[str, Any]) -> None:
        self.calls, self.phase = int(state["calls"]), str(state["phase"])
        self.masks = state["masks"]
        self.steps_used, self.selected_step = int(state["steps_used"]), state["selected_step"]
        self.recorded = dict(state["recorded"])
        self.task_masks = dict(state["task_masks"])


class MethodContext:
    """What a pruning method sees: read-only facts of its cell (model, spec, target, data, what it has pruned
    and spent so far) and the actions that change the cell (``apply_masks``, ``train``/``finetune``,
    ``load_weights``, ``record``, ``log``). The engine keeps the rest in a :class:`TrainingSession`."""

    def __init__(
        self,
        model: MTLModel,
        spec: RunSpec,
        train_set: Any,
        device: torch.device,
        *,
        val_set: Any = None,
        dense_dir: Path | None = None,
        session: TrainingSession | None = None,
        stage_dirs: Mapping[str, Path] | None = None,
    ) -> None:
        self._model, self._spec, self._device = model, spec, device
        self._train_set, self._val_set = train_set, val_set
        self._dense_dir = dense_dir  # the dense stage's run directory (init, final and rewind weights)
        # run id → run directory of each stage the method asked for (PruningMethod.extra_stages)
        self._stage_dirs = dict(stage_dirs or {})
        self._session = session or TrainingSession()

    @property
    def model(self) -> MTLModel:
        return self._model

    @property
    def spec(self) -> RunSpec:
        return self._spec

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def train_set(self) -> Any:
        return self._train_set

    @property
    def val_set(self) -> Any:
        return self._val_set

    @property
    def masks(self) -> Mapping[str, Tensor] | None:
        """The keep-masks held now (read-only: they change through ``apply_masks`` or a callback)."""
        masks = self._session.masks
        return None if masks is None else MappingProxyType(masks)

    @property
    def task_masks(self) -> Mapping[str, Masks]:
        """Each task's own keep-mask, as recorded by ``record_task_masks`` (read-only)."""
        return MappingProxyType(self._session.task_masks)

    @property
    def recorded(self) -> Mapping[str, Any]:
        """What ``record`` kept so far for result.json's ``method_state`` (read-only)."""
        return MappingProxyType(self._session.recorded)

    @property
    def steps_used(self) -> int:
        """Optimizer steps spent by ``train``/``finetune`` calls so far."""
        return self._session.steps_used

    @property
    def selected_step(self) -> int | None:
        return self._session.selected_step

    # ------------------------------------------------------------------------------------------- facts

    @property
    def target(self) -> float:
        return self.spec.target_sparsity

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, salt): a method's own randomness, independent of training."""
        return torch.Generator().manual_seed(self.spec.seed * 7_919 + 104_729 + salt)

    def prunable(self) -> dict[str, nn.Parameter]:
        """Conv and linear weights by name: the prunable set, the same for every method."""
        return self.model.prunable_parameters()

    def component_of(self, name: str) -> str:
        """``backbone`` or ``head/<task>`` for a prunable parameter name."""
        return self.model.component_of(name)

    def scoring_copy(self) -> MTLModel:
        """The model to score on: a copy with dropout off and BN on batch statistics (:func:`scoring_copy`).

        Compute scores from its parameters (``copy.prunable_parameters()``, same names as ``prunable()``);
        the cell's model stays exactly as it was.
        """
        return scoring_copy(self.model)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------- masks

    def select_masks(
        self,
        scores: Mapping[str, Tensor],
        scope: Scope = "global",
        target: float | None = None,
        current: Masks | None = None,
    ) -> Masks:
        """Keep-masks removing exactly the ``target`` fraction (default: the cell's) of the lowest scores.

        ``scope``: ``global``, ``layer`` (uniform per layer), ``component`` (backbone and each head at the
        target) or ``erk``; ``current`` keeps already-pruned weights pruned (iterative pruning).
        """
        return select_masks(
            scores,
            self.target if target is None else target,
            scope,
            component_of=self.component_of,
            current=current,
        )

    def apply_masks(self, masks: Masks) -> None:
        """Zero the pruned weights and record the masks (what the runner verifies and stores)."""
        apply_masks(self.prunable(), masks)
        self._session.masks = {n: m.detach().to(torch.bool).cpu() for n, m in masks.items()}

    # ---------------------------------------------------------------------------------------- weights

    def dense_weights(self, which: str = "final") -> dict[str, Tensor]:
        """A state dict of the cell's dense stage: ``init`` (step 0), ``rewind`` (its early snapshot, after
        ``train.rewind_at`` steps) or ``final`` (the trained dense model)."""
        files = {"init": "init.pt", "rewind": "rewind.pt", "final": "model.pt"}
        if which not in files:
            raise ValueError(f"unknown dense snapshot {which!r}; allowed: {', '.join(files)}")
        if self._dense_dir is None:
            raise RuntimeError("this context has no dense stage (dense_dir is unset)")
        path = self._dense_dir / files[which]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the dense stage has no {which!r} snapshot")
        return load_state(path)

    def stage_weights(self, stage: DenseSpec, which: str = "final") -> dict[str, Tensor]:
        """A state dict of a stage the method asked for (``PruningMethod.extra_stages``): ``final`` (its
        trained model) or ``init``."""
        files = {"init": "init.pt", "final": "model.pt"}
        if which not in files:
            raise ValueError(f"unknown stage snapshot {which!r}; allowed: {', '.join(files)}")
        run_dir = self._stage_dirs.get(stage.run_id)
        if run_dir is None:
            raise KeyError(
                f"stage {stage.run_id} ({','.join(stage.data.tasks)}) is not one this cell's method asked "
                "for in extra_stages(spec)"
            )
        path = run_dir / files[which]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the stage has no {which!r} snapshot")
        return load_state(path)

    def replace_model(self, model: MTLModel) -> None:
        """Make ``model`` the cell's model (moved to the device): a method whose result is another kind of
        model than the one it started from (ECS's delta-shared model). The runner checks, stores and
        evaluates ``ctx.model`` after ``run``; masks recorded so far name the old model's parameters and are
        dropped."""
        self._model = model.to(self.device)
        self._session.masks = None

    def rewind_step(self) -> int:
        """The dense step the ``rewind`` snapshot was taken at."""
        return self.spec.train.rewind_at

    def load_weights(self, state: Mapping[str, Tensor], keep_masks: bool = True) -> None:
        """Load a state dict into the model; with ``keep_masks`` the recorded masks are re-applied."""
        self.model.load_state_dict(dict(state))
        self.model.to(self.device)
        if keep_masks and self._session.masks is not None:
            apply_masks(self.prunable(), self._session.masks)

    # --------------------------------------------------------------------------------------- training

    def sparse_training_spec(self) -> TrainSpec:
        """The budget of a method that trains from initialisation: dense + finetune steps on the dense recipe.

        This is the default fairness rule (docs/protocols.md): an at-init method gets as many optimizer
        steps as a method that starts from the dense model spends on dense training plus finetuning.
        """
        steps = fairness_steps("init", self.spec.train.steps, self.spec.finetune.steps)
        return self.spec.train.model_copy(update={"steps": steps})

    def train(
        self,
        spec: TrainSpec | None = None,
        *,
        phase: str = "train",
        callbacks: Sequence[TrainCallback] = (),
        step_offset: int = 0,
        schedule: TrainSpec | None = None,
        optimization: Optimization | None = None,
    ) -> int:
        """Train with the current masks held (callbacks may change them); returns the steps taken.

        ``spec`` defaults to the cell's finetune budget. ``schedule`` (default ``spec``) supplies the LR
        schedule, entered at ``step_offset`` (LR rewinding). ``optimization``: the method's own parameter
        groups (which parameters train, with which LR, weight decay and clip; mtlprune.engine.train)
        instead of the recipe's optimizer over every trainable parameter. Each call draws its own batch
        order. Steps are added to ``steps_used``; the selected step (``eval.selection``) and the final masks
        are recorded.
        """
        spec = spec or self.spec.finetune
        session = self._session
        session.calls += 1
        stage = session.checkpoint
        if stage is not None and stage.skips(session.calls):
            # Resuming: this call finished before the checkpoint; its effects come back with it.
            return spec.steps
        call_checkpoint = None
        if stage is not None:
            call_checkpoint = stage.for_call(session.calls, session.owner_state)
            payload = stage.take(session.calls)
            if payload is not None:
                session.load_owner_state(payload["owner"])
                call_checkpoint.resume = payload

        def on_step(step: int, scalars: dict[str, float]) -> None:
            session.logger({"phase": phase, "step": step, **scalars})

        session.phase = phase  # what ctx.log calls (from callbacks) are tagged with while this call trains
        try:
            outcome = train(
                self.model,
                TrainingData.of(self.spec, self.train_set, self.val_set, self.device, session.loading),
                spec=spec,
                seed=self.spec.seed + session.calls,
                masks=session.masks,
                on_step=on_step,
                callbacks=callbacks,
                step_offset=step_offset,
                schedule=schedule,
                checkpoint=call_checkpoint,
                guard=None if session.initial_losses is None else DivergenceGuard(session.initial_losses),
                optimization=optimization,
            )
        finally:
            session.phase = "prune"  # between training calls a method selects, scores, prunes
        if outcome.masks is not None:
            session.masks = outcome.masks
        session.steps_used += outcome.steps
        session.selected_step = session.steps_used - outcome.steps + outcome.selected_step
        return outcome.steps

    def finetune(self, spec: TrainSpec | None = None) -> int:
        """Train with the current masks held fixed, on the cell's finetune budget unless ``spec`` is given."""
        return self.train(spec, phase="finetune")

    # ---------------------------------------------------------------------------- scoring on batches

    def batches(self, n: int, batch_size: int | None = None, salt: int = 0) -> Iterator[dict[str, Any]]:
        """``n`` training batches (augmented as in training) on the device, in a seeded order of their own.

        For scoring (SNIP, GraSP, DiSparse): these are forward/backward passes, not optimizer steps, so they
        do not count toward ``steps_used``.
        """
        size = batch_size or self.spec.train.batch_size
        seed = self.spec.seed * 1_000 + 977 + salt
        for batch in batch_stream(self.train_set, size, seed, steps=n):
            yield to_device(batch, self.device)

    def task_losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Each task's training loss (the cell's dataset and protocol) for a forward pass."""
        losses = make_losses(
            self.spec.data.dataset,
            self.tasks,
            getattr(self.train_set, "class_weights", None),
            self.spec.eval.protocol,
        )
        return {t: losses[t](outputs[t], batch[t]) for t in self.tasks}

    def total_loss(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The weighted multi-task loss of the training recipe (fixed ``task_weights``, default 1)."""
        weights = self.spec.train.task_weights or {}
        return sum(weights.get(t, 1.0) * losses[t] for t in self.tasks)

    # -------------------------------------------------------------------------------------------- log

    def record_task_masks(self, task_masks: Mapping[str, Masks]) -> None:
        """Keep each task's own keep-mask (what the task alone would keep) for cross-task mask analytics."""
        self._session.task_masks = {
            t: {n: m.detach().to(torch.bool).cpu() for n, m in ms.items()} for t, ms in task_masks.items()
        }

    def record(self, **values: Any) -> None:
        """Keep final values of the method's own state (e.g. learned thresholds) in result.json."""
        self._session.recorded.update(values)

    def log(self, **scalars: Any) -> None:
        """Write one record of scalars to the cell's log (``log.jsonl``), tagged with the current phase: the
        ``phase`` of the training call it is made from (a callback's log), else ``prune``."""
        self._session.logger({"phase": self._session.phase, **scalars})
