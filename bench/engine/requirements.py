"""What running a matrix needs, gathered without running anything: each dataset's root and sample counts,
each model's parameters by component, each stage's optimizer steps.

These are the facts only a plugin knows — the dataset's listing and published split sizes, the architecture's
components (built on the meta device: shapes, no memory, no time), the method's planned steps — asked through
the registry; mtlprune.plan.compute turns them into time, GPU-hours and a Slurm request (torch-free), and
`mtlprune plan` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlprune.engine.build import build_model
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.plan.compute import DataNeeds, ModelSize, PlannedStage, data_key, model_key
from mtlprune.plan.stages import Stage
from mtlprune.registry import DATASETS, METHODS
from mtlprune.spec import DataSpec, DenseSpec, MatrixSpec, RunSpec


def data_needs(matrix: MatrixSpec) -> dict[tuple[str, ...], DataNeeds]:
    """Each dataset of ``matrix``: its root, the published split sizes, and what its listing holds (one JSON
    read per root; synthetic data: the counts its section renders)."""
    needs: dict[tuple[str, ...], DataNeeds] = {}
    for data in matrix.datasets:
        key = data_key(data)
        if key not in needs:
            needs[key] = _data_needs(data)
    return needs


def _data_needs(data: DataSpec) -> DataNeeds:
    cls = DATASETS.get(data.dataset)
    if data.source == "synthetic":
        s = data.synthetic
        counts = {"train": s.n_train, "test": s.n_test}
        return DataNeeds(
            data.dataset,
            "synthetic",
            f"rendered into the store on first use ({s.height}×{s.width} frames)",
            expected=counts,
            reference="the config's synthetic section",
            found=counts,
        )
    expected = dict(getattr(cls, "expected_counts", {}))
    reference = getattr(cls, "expected_source", "")
    try:
        root = data.resolved_root()
    except ValueError as exc:
        return DataNeeds(data.dataset, "disk", str(data.root), expected, reference, problem=str(exc))
    listing = root / cls.listing_name
    if not listing.is_file():
        problem = (
            f"{listing} does not exist; see docs/datasets.md, then check it with: mtlprune data verify "
            f"--dataset {data.dataset} --root {root}"
        )
        return DataNeeds(data.dataset, "disk", str(root), expected, reference, problem=problem)
    try:
        found = cls.count_samples(root)
    except ValueError as exc:  # DataFormatError: the listing is not what the format says
        return DataNeeds(data.dataset, "disk", str(root), expected, reference, problem=str(exc))
    return DataNeeds(data.dataset, "disk", str(root), expected, reference, found=found)


def model_sizes(matrix: MatrixSpec) -> dict[tuple[object, ...], ModelSize]:
    """Parameters by component of each model setting of ``matrix``, and its activation estimate, from the
    model built on the meta device (shapes only, even for full-width models)."""
    sizes: dict[tuple[object, ...], ModelSize] = {}
    for dense in matrix.dense_stages():
        key = model_key(dense)
        if key not in sizes:
            sizes[key] = model_size(dense)
    return sizes


def model_size(spec: DenseSpec | RunSpec) -> ModelSize:
    """The parameter split (backbone, each head; all and prunable) and activation estimate of ``spec``'s
    model."""
    with torch.device("meta"):
        model = build_model(spec)
    parameters = {name: _count(module.parameters()) for name, module in model.components().items()}
    prunable = dict.fromkeys(parameters, 0)
    for name, weight in model.prunable_parameters().items():
        prunable[model.component_of(name)] += weight.numel()
    other = _count(model.parameters()) - sum(parameters.values())
    if other:  # an architecture with parameters outside its backbone and heads
        parameters["other"] = other
    return ModelSize(
        arch=spec.arch.name,
        width=spec.arch.width,
        head_width=spec.arch.head_width,
        tasks=tuple(spec.data.tasks),
        parameters=parameters,
        prunable=prunable,
        activations_per_sample=activation_elements(model, spec.data.crop),
    )


def _count(params: object) -> int:
    return sum(p.numel() for p in params)  # type: ignore[attr-defined]


def activation_elements(model: MTLModel, crop: tuple[int, int]) -> int | None:
    """Elements the model's leaf modules output in one training forward pass of one sample at ``crop``, on
    the meta device: what autograd keeps for the backward pass, roughly (an estimate, not a measurement).
    None when the architecture does not run on the meta device."""
    total = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        outputs = output.values() if isinstance(output, dict) else (output,)
        total += sum(t.numel() for t in outputs if isinstance(t, Tensor))  # type: ignore[union-attr]

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.train()
        model(torch.empty(1, 3, *crop, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def planned_stages(stages: Sequence[Stage]) -> list[PlannedStage]:
    """Each stage with its optimizer steps: a dense stage's ``train.steps``; a cell's from its method
    (``PruningMethod.planned_steps``: the fairness rule, or the method's own count), with its step kind and
    the steps of the stages its method asks for (``extra_stages``, counted in its ``steps_total``)."""
    out = []
    for stage in stages:
        spec = stage.spec
        if isinstance(spec, DenseSpec):
            out.append(PlannedStage(stage, spec.train.steps, "dense"))
            continue
        method = METHODS.get(spec.method.name)(spec.method.parsed_params())
        try:
            steps = int(method.planned_steps(spec))
        except ValueError as exc:
            raise ValueError(f"cell {stage.label}: {exc}") from None
        kind = getattr(method, "step_kind", "masked")
        extra = sum(d.train.steps for d in spec.extra_stages())
        out.append(PlannedStage(stage, steps, kind, method.starts_from, extra))
    return out
