"""What a plan costs before anything runs (torch-free): the optimizer steps of each stage under the fairness
rule, the time and GPU-hours they take at a measured step time, and a Slurm request (time, memory) per stage.

The facts come from where they are known — a cell's steps from its method (``PruningMethod.planned_steps``,
asked through the registry by mtlprune.engine.requirements), parameter counts from the model built on the
meta device, sample counts from the dataset plugin, seconds per step from ``--step-time`` (a number, or the
JSON ``python -m tools.gpu_check --json FILE`` writes) — and every number is computed here, one typed function
per rule, so that each rule has hand-computed tests (tests/plan/test_compute.py) and the command line only
formats. The rules, documented in docs/slurm.md ("From a measured step time to a Slurm request"):

- **time** of a stage = its steps × the seconds per step of its kind (``dense``: no masks; ``masked``: masks
  held; ``adapmtl``: soft thresholds) + evaluation, where one evaluated sample costs a third of a training
  step's time per sample (a forward pass without the backward), over the test split once and, under
  ``eval.selection: best_val``, over the validation split every ``val_every`` steps;
- **Slurm** ``--time`` = that time × 1.5 (:data:`SAFETY_FACTOR`), rounded up to a whole 15 minutes;
- **device memory** = weights, gradients and optimizer slots in fp32 + one byte per mask entry + the
  activations of a training step (the outputs of the model's modules in one forward pass at the training
  crop, × batch, 4 bytes each, 2 under mixed precision), or the peak ``tools.gpu_check`` measured for the
  same setting; **host memory** (``--mem``) = 4 GiB (interpreter, torch, CUDA context) + 1 GiB per loader
  worker + three copies of the weights and optimizer state (the dense checkpoint read, the in-stage
  checkpoint serialised in memory before it is written) + the device memory when the device is the CPU,
  × 1.5, rounded up to a whole GiB.

These are estimates that a measurement replaces: the step times are measured, the rest are rules of thumb.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlprune.plan.stages import Stage
from mtlprune.spec import DataSpec, DenseSpec, RunSpec, TrainSpec

STEP_KINDS = ("dense", "masked", "adapmtl")
"""What an optimizer step costs like: no masks, masks held, AdapMTL's soft thresholds (tools.gpu_check)."""

STEP_TIME_FORMAT = "mtl-prunebench step times 1"
"""The ``format`` a ``tools.gpu_check --json`` file carries (informative: the keys below are what is read)."""

STEP_TIME_KEYS = (
    *(f"seconds_per_step.{kind}" for kind in STEP_KINDS),
    "setting.arch",
    "setting.width",
    "setting.head_width",
    "setting.size",
    "setting.batch",
    "setting.amp",
    "device",
)
"""The keys a step-time JSON must have (dotted paths)."""

SAFETY_FACTOR = 1.5
"""Slurm time and memory requests are the estimate times this."""

TIME_GRAIN_MIN = 15
"""A suggested ``--time`` is a whole number of these minutes (and at least one)."""

EVAL_COST_SHARE = 1 / 3
"""An evaluated sample costs this share of a training step's time per sample (forward, no backward)."""

GIB = 2**30
HOST_BASE_BYTES = 4 * GIB
"""Host memory of a stage before its model: the interpreter, torch, the CUDA context."""

LOADER_WORKER_BYTES = 1 * GIB
"""Host memory per loader worker process (``runtime.num_workers``)."""

HOST_STATE_COPIES = 3
"""Copies of weights + optimizer state a stage may hold in host memory at once."""

FP32_BYTES = 4


class StepTimeError(ValueError):
    """A ``--step-time`` that is neither seconds > 0 nor a readable step-time JSON; the message names it."""


def fairness_steps(starts_from: str, train_steps: int, finetune_steps: int) -> int:
    """The optimizer steps the fairness rule gives a cell (docs/protocols.md): the finetune budget to a
    method that starts from the trained dense model; dense + finetune steps to one that starts from the
    initialisation, so both have trained as long when they finish."""
    if starts_from == "dense":
        return finetune_steps
    if starts_from == "init":
        return train_steps + finetune_steps
    raise ValueError(f"starts_from must be 'dense' or 'init', got {starts_from!r}")


# ------------------------------------------------------------------------------------------ the facts


@dataclass(frozen=True)
class PlannedStage:
    """A stage with the optimizer steps it will take: a dense stage its ``train.steps``, a cell what its
    method plans (``PruningMethod.planned_steps``), of the kind its method's steps are (``step_kind``)."""

    stage: Stage
    steps: int
    step_kind: str
    starts_from: str | None = None  # a cell's start ("dense", "init", "base"); None for a dense stage
    extra_steps: int = 0  # a cell's share of the stages its method asks for (``PruningMethod.extra_stages``)

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def run_id(self) -> str:
        return self.stage.run_id

    @property
    def steps_total(self) -> int:
        """What the stage's result will record as ``steps_total``: a cell that starts from the trained dense
        model also counts its dense stage's steps, and every cell the steps of the stages its method asked
        for (bench/engine/cell.py)."""
        spec = self.stage.spec
        if isinstance(spec, RunSpec) and self.starts_from == "dense":
            return self.steps + spec.train.steps + self.extra_steps
        return self.steps + self.extra_steps

    @property
    def recipe(self) -> TrainSpec:
        """The training recipe most of its steps follow: the finetune recipe for a cell that starts from a
        trained model (the dense one, or a base stage of its own), the dense recipe otherwise (batch size,
        optimizer, precision)."""
        spec = self.stage.spec
        if isinstance(spec, RunSpec) and self.starts_from in ("dense", "base"):
            return spec.finetune
        return spec.train


@dataclass(frozen=True)
class DataNeeds:
    """One dataset of a matrix: where it is, how many samples per split the published data has
    (``expected``, from the dataset plugin; empty where none are published) and how many its listing holds
    (``found``; None where the root cannot be read, with the reason in ``problem``)."""

    dataset: str
    source: str  # "disk" or "synthetic"
    root: str
    expected: dict[str, int] = field(default_factory=dict)
    reference: str = ""  # where the expected counts come from
    found: dict[str, int] | None = None
    problem: str | None = None

    def count(self, split: str) -> int | None:
        """The samples of ``split``: as found, else as expected, else None."""
        if self.found is not None and split in self.found:
            return self.found[split]
        return self.expected.get(split)

    def mismatches(self) -> list[str]:
        """Each split whose found count differs from the expected one."""
        if self.found is None:
            return []
        return [
            f"{split}: found {self.found.get(split, 0)}, expected {n}"
            for split, n in self.expected.items()
            if self.found.get(split) != n
        ]


def data_key(data: DataSpec) -> tuple[str, ...]:
    """What tells the datasets of a matrix apart for :class:`DataNeeds`: synthetic by its section, disk by
    its root."""
    if data.source == "synthetic":
        return ("synthetic", data.dataset, data.synthetic.model_dump_json())
    return ("disk", data.dataset, str(data.root))


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of one model by component (``backbone``, ``head/<task>``), all and prunable, and the
    elements its modules output in one training forward pass of one sample at the training crop (the
    activation estimate; None where the model could not be run on the meta device)."""

    arch: str
    width: float
    head_width: float
    tasks: tuple[str, ...]
    parameters: dict[str, int]
    prunable: dict[str, int]
    activations_per_sample: int | None = None

    @property
    def total(self) -> int:
        return sum(self.parameters.values())

    @property
    def total_prunable(self) -> int:
        return sum(self.prunable.values())

    @property
    def heads(self) -> int:
        return sum(n for component, n in self.parameters.items() if component.startswith("head/"))

    @property
    def heads_share(self) -> float:
        """The heads' share of all parameters (MobileNetV2's ASPP heads on 1280 channels: 98.6%)."""
        return self.heads / self.total if self.total else 0.0


def model_key(spec: DenseSpec | RunSpec) -> tuple[Any, ...]:
    """What a model's size depends on: the dataset (its task channels), tasks, architecture, widths, crop."""
    data, arch = spec.data, spec.arch
    return (data.dataset, data.tasks, arch.name, arch.width, arch.head_width, data.crop)


# ------------------------------------------------------------------------------------------ step times


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step by step kind, where they come from, and the setting they were measured
    on (empty for a plain number, which stands for every setting)."""

    seconds: dict[str, float]
    source: str
    setting: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    peak_memory_gib: dict[str, float] = field(default_factory=dict)

    def per_step(self, kind: str) -> float:
        return self.seconds[kind]

    def describe(self) -> str:
        """One line: the times, and for a measurement its setting, device and file."""
        if len(set(self.seconds.values())) == 1:
            times = f"{next(iter(self.seconds.values())):g} s per step"
        else:
            times = ", ".join(f"{k} {v:.4g} s" for k, v in self.seconds.items()) + " per step"
        if not self.setting:
            return f"{times} ({self.source})"
        s = self.setting
        return (
            f"{times}, measured on {self.device} for {s['arch']} w{s['width']:g}/h{s['head_width']:g} "
            f"{s['size']}×{s['size']} batch {s['batch']} amp {s['amp']} ({self.source})"
        )

    def differences(self, planned: PlannedStage) -> list[str]:
        """How the stage's setting differs from the measured one (architecture, widths, crop, batch,
        precision); empty for a plain number or a match."""
        if not self.setting:
            return []
        spec, recipe, s = planned.stage.spec, planned.recipe, self.setting
        pairs = [
            ("arch", spec.arch.name, s["arch"]),
            ("width", spec.arch.width, s["width"]),
            ("head_width", spec.arch.head_width, s["head_width"]),
            ("crop", f"{spec.data.crop[0]}×{spec.data.crop[1]}", f"{s['size']}×{s['size']}"),
            ("batch", recipe.batch_size, s["batch"]),
            ("amp", recipe.amp, s["amp"]),
        ]
        return [f"{name} {ours} (measured: {theirs})" for name, ours, theirs in pairs if ours != theirs]


def _positive_seconds(value: Any, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise StepTimeError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _lookup(data: Any, dotted: str, source: str) -> Any:
    value = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise StepTimeError(
                f"--step-time {source}: missing key {dotted!r} (a step-time JSON is written by "
                "python -m tools.gpu_check --json FILE)"
            )
        value = value[part]
    return value


def parse_step_time(text: str) -> StepTime:
    """``--step-time``: seconds per step (one number for every stage) or a ``tools.gpu_check --json`` file.

    Anything else — a number <= 0 or not finite, a missing file, a file that is not JSON, a JSON without a
    key of :data:`STEP_TIME_KEYS` or with a step time that is not a positive number — is a
    :class:`StepTimeError` naming the value, the file or the key.
    """
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        seconds = _positive_seconds(number, f"--step-time {text!r}")
        return StepTime(dict.fromkeys(STEP_KINDS, seconds), source="--step-time")
    path = Path(text).expanduser()
    if not path.is_file():
        raise StepTimeError(
            f"--step-time {text!r}: neither a number of seconds nor an existing file (write one with "
            "python -m tools.gpu_check --json FILE)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StepTimeError(f"--step-time {path}: not a readable JSON file ({exc})") from None
    for key in STEP_TIME_KEYS:
        _lookup(data, key, str(path))
    seconds = {
        kind: _positive_seconds(
            data["seconds_per_step"][kind], f"--step-time {path}: seconds_per_step.{kind}"
        )
        for kind in STEP_KINDS
    }
    peaks = data.get("peak_memory_gib")
    peaks = peaks if isinstance(peaks, dict) else {}  # optional: null on a CPU
    peak_memory = {
        k: float(v) for k, v in peaks.items() if k in STEP_KINDS and isinstance(v, int | float) and v > 0
    }
    setting = {key: data["setting"][key] for key in ("arch", "width", "head_width", "size", "batch", "amp")}
    return StepTime(seconds, str(path), setting, str(data["device"]), peak_memory)


# ------------------------------------------------------------------------------------------ the rules


def eval_samples(planned: PlannedStage, data: DataNeeds | None) -> int | None:
    """Samples a stage forwards to evaluate: the test split once and, under ``best_val``, the validation
    split (``val_fraction`` of train, at least 1, as mtlprune.engine.data carves it) every ``val_every``
    steps; None when the counts are unknown."""
    if data is None:
        return None
    spec = planned.stage.spec
    test = data.count("test")
    if test is None:
        return None
    if spec.eval.selection != "best_val" or spec.data.val_fraction <= 0 or planned.steps == 0:
        return test
    train = data.count("train")
    if train is None:
        return None
    n_val = max(1, round(spec.data.val_fraction * train))
    return test + n_val * math.ceil(planned.steps / spec.eval.val_every)


def eval_seconds(samples: int, batch_size: int, step_s: float) -> float:
    """Evaluating ``samples`` at ``step_s`` seconds per training step of ``batch_size`` samples."""
    return samples / batch_size * step_s * EVAL_COST_SHARE


def stage_seconds(planned: PlannedStage, step_time: StepTime, data: DataNeeds | None = None) -> float:
    """A stage's training steps at its kind's step time, plus its evaluation where the counts are known."""
    step_s = step_time.per_step(planned.step_kind)
    samples = eval_samples(planned, data)
    evaluation = eval_seconds(samples, planned.recipe.batch_size, step_s) if samples else 0.0
    return planned.steps * step_s + evaluation


def gpu_hours(seconds: float) -> float:
    return seconds / 3600.0


def slurm_minutes(seconds: float) -> int:
    """The suggested ``--time`` of a stage expected to take ``seconds``: × :data:`SAFETY_FACTOR`, rounded up
    to a whole :data:`TIME_GRAIN_MIN` minutes, at least one grain."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"slurm_minutes: expected finite seconds >= 0, got {seconds!r}")
    grains = math.ceil(seconds * SAFETY_FACTOR / 60 / TIME_GRAIN_MIN - 1e-9)
    return max(1, grains) * TIME_GRAIN_MIN


def slurm_time(minutes: int) -> str:
    """Minutes as sbatch ``--time`` takes them: ``H:MM:00``, or ``D-HH:MM:00`` from a day on."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours}:{mins:02d}:00"


def optimizer_slots(recipe: TrainSpec) -> int:
    """Per-parameter optimizer state tensors: Adam's two moments, SGD's momentum buffer (none without)."""
    if recipe.optimizer == "adam":
        return 2
    return 1 if recipe.momentum > 0 else 0


@dataclass(frozen=True)
class MemoryEstimate:
    """A stage's memory: on its device (``measured``: the peak tools.gpu_check reported for the setting)
    and on its host, in bytes; ``activations_known`` False when the device figure lacks the activations."""

    device_bytes: float
    host_bytes: float
    measured: bool = False
    activations_known: bool = True

    @property
    def device_gib(self) -> float:
        return self.device_bytes / GIB

    @property
    def slurm_mem_gib(self) -> int:
        """The suggested ``--mem`` in whole GiB: host memory × :data:`SAFETY_FACTOR`, rounded up."""
        return math.ceil(self.host_bytes * SAFETY_FACTOR / GIB - 1e-9)


def memory_estimate(
    size: ModelSize,
    recipe: TrainSpec,
    loader_workers: int = 0,
    on_cpu: bool = False,
    measured_peak_gib: float | None = None,
) -> MemoryEstimate:
    """The memory rule of the module docstring for one model trained on ``recipe``."""
    slots = optimizer_slots(recipe)
    state = size.total * FP32_BYTES * (2 + slots) + size.total_prunable  # weights, grads, slots; masks 1 B
    known = size.activations_per_sample is not None
    activation_bytes = 2 if recipe.amp != "none" else FP32_BYTES
    activations = (size.activations_per_sample or 0) * recipe.batch_size * activation_bytes
    measured = measured_peak_gib is not None
    device = measured_peak_gib * GIB if measured_peak_gib is not None else state + activations
    checkpoint = size.total * FP32_BYTES * (1 + slots)
    host = HOST_BASE_BYTES + loader_workers * LOADER_WORKER_BYTES + HOST_STATE_COPIES * checkpoint
    if on_cpu:
        host += device
    return MemoryEstimate(device, host, measured=measured, activations_known=known or measured)


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class StageCost:
    """One stage's planned steps, expected seconds (None: no step time and no measurement), suggested
    Slurm minutes and memory (None: its model size is unknown)."""

    planned: PlannedStage
    seconds: float | None
    memory: MemoryEstimate | None
    done: bool = False

    @property
    def slurm_minutes(self) -> int | None:
        return None if self.seconds is None else slurm_minutes(self.seconds)


@dataclass(frozen=True)
class ComputePlan:
    """Steps, time, GPU-hours and the Slurm request of a plan's stages (pending ones cost time)."""

    stages: list[StageCost]
    step_time: StepTime | None = None
    notes: list[str] = field(default_factory=list)

    def steps(self, kind: str | None = None) -> int:
        """Optimizer steps of every stage (of ``kind``), done ones included."""
        return sum(c.planned.steps for c in self.stages if kind in (None, c.planned.kind))

    @property
    def pending(self) -> list[StageCost]:
        return [c for c in self.stages if not c.done]

    @property
    def pending_seconds(self) -> float | None:
        """The summed expected time of the pending stages; None when one of them has no estimate."""
        times = [c.seconds for c in self.pending]
        if any(t is None for t in times):
            return None
        return math.fsum(t for t in times if t is not None)

    def slurm_minutes(self, kind: str | None = None) -> int | None:
        """The ``--time`` that covers every pending stage (of ``kind``): the longest one's suggestion."""
        minutes = [c.slurm_minutes for c in self.pending if kind in (None, c.planned.kind)]
        if not minutes or any(m is None for m in minutes):
            return None
        return max(m for m in minutes if m is not None)

    def slurm_mem_gib(self, kind: str | None = None) -> int | None:
        """The ``--mem`` that covers every pending stage (of ``kind``) with a known model size."""
        mems = [c.memory.slurm_mem_gib for c in self.pending if c.memory and kind in (None, c.planned.kind)]
        return max(mems) if mems else None

    def over_limit(self, limit_min: int) -> list[StageCost]:
        """Pending stages whose suggested time exceeds ``limit_min`` (they would be requeued and resume)."""
        return [c for c in self.pending if c.slurm_minutes is not None and c.slurm_minutes > limit_min]


def compute_plan(
    planned: Sequence[PlannedStage],
    *,
    step_time: StepTime | None = None,
    measured: Mapping[str, float | None] | None = None,
    done: Iterable[str] = (),
    data: Mapping[tuple[str, ...], DataNeeds] | None = None,
    models: Mapping[tuple[Any, ...], ModelSize] | None = None,
    loader_workers: int = 0,
    on_cpu: bool = False,
) -> ComputePlan:
    """Price ``planned``: from ``step_time`` when given (every stage), else from ``measured`` seconds per
    pending run id (mtlprune.plan.estimate: finished stages' wall times). Memory from ``models``; a
    measured peak memory replaces the device estimate where the stage's setting is the measured one."""
    done, data, models = set(done), data or {}, models or {}
    costs, notes = [], []
    mismatched: dict[str, int] = {}
    for p in planned:
        spec = p.stage.spec
        if step_time is not None:
            seconds: float | None = stage_seconds(p, step_time, data.get(data_key(spec.data)))
            for diff in step_time.differences(p):
                mismatched[diff] = mismatched.get(diff, 0) + 1
        else:
            seconds = None if measured is None else measured.get(p.run_id)
        size = models.get(model_key(spec))
        memory = None
        if size is not None:
            peak = None
            if step_time is not None and not step_time.differences(p):
                peak = step_time.peak_memory_gib.get(p.step_kind)
            memory = memory_estimate(size, p.recipe, loader_workers, on_cpu, peak)
        costs.append(StageCost(p, seconds, memory, done=p.run_id in done))
    if mismatched:
        notes.append(
            "step times were measured on another setting for some stages and are used as they are: "
            + "; ".join(f"{n} stage(s) with {diff}" for diff, n in mismatched.items())
        )
    return ComputePlan(costs, step_time, notes)
