"""pydantic v2 spec models: the matrix a user writes, the cells it expands to, and the dense stages.

Every model forbids unknown keys (with a close-match suggestion) and is frozen. Registry names (dataset,
task, architecture, method) and method parameters are validated here, before any work starts.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import types
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mtlprune.registry import ARCHS, DATASETS, METHODS, suggest
from mtlprune.spec.identity import spec_hash
from mtlprune.vocabulary import METRICS

# 2: CPU stages run on one thread with denormals flushed to zero, every RNG seeded from the run id, the
# divergence rules (mtlprune.engine.determinism, mtlprune.engine.divergence); results of version 1 are not
# reused.
SCHEMA_VERSION = 2

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]

# The largest seed: the engine derives its generators' seeds from a stage's seed by arithmetic (batch order:
# (seed · 1000 + salt) · 1000003 + epoch for scoring batches, mtlprune.engine.data and .context), and torch
# takes at most 2^64 − 1; 2^32 − 1 (NumPy's legacy seed range) keeps every derived seed in range.
MAX_SEED = 2**32 - 1


def _seed_range(value: int) -> int:
    if value > MAX_SEED:
        raise ValueError(
            f"a seed is an integer from 0 to {MAX_SEED} (2^32 - 1): the generators of a stage are seeded "
            "by arithmetic on it, which must stay within 64 bits"
        )
    return value


Seed = Annotated[int, Field(ge=0), AfterValidator(_seed_range)]


def _bool_problem(annotation: Any, value: Any, where: str = "") -> str | None:
    """What is wrong when ``value`` holds a boolean where ``annotation`` wants a number, or None.

    YAML's ``true``/``false`` would otherwise pass as 1/0 (pydantic's lax mode): ``steps: true`` is one step.
    A place that also allows ``bool`` (``str | int | bool``) takes booleans; lists, tuples and dict values
    are looked into (``seeds: [0, true]``); nested models check their own fields.
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return _bool_problem(get_args(annotation)[0], value, where)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if bool in options:
            return None
        for option in options:
            problem = _bool_problem(option, value, where)
            if problem:
                return problem
        return None
    if annotation in (int, float):
        if isinstance(value, bool):
            kind = "an integer" if annotation is int else "a number"
            return f"expected {kind}{' at ' + where if where else ''}, got a boolean"
        return None
    args = get_args(annotation)
    if origin in (list, tuple) and isinstance(value, list | tuple) and args:
        fixed = origin is tuple and args[-1] is not Ellipsis
        for i, item in enumerate(value):
            if fixed and i >= len(args):
                break
            problem = _bool_problem(args[i] if fixed else args[0], item, f"{where}[{i}]")
            if problem:
                return problem
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, item in value.items():
            problem = _bool_problem(args[1], item, f"{where}[{key!r}]")
            if problem:
                return problem
    return None


def not_hashed(default: Any = None, **kwargs: Any) -> Any:
    """A field that never enters the content hash (paths, devices, batch sizes of pure evaluation...)."""
    return Field(default, json_schema_extra={"hash": False}, **kwargs)


def always_hashed(default: Any, **kwargs: Any) -> Any:
    """A field that enters the hash even at its default (schema version, stage kind)."""
    return Field(default, json_schema_extra={"always_hash": True}, **kwargs)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class StrictModel(BaseModel):
    """Frozen, no unknown keys; an unknown key is reported with the closest allowed names.

    Values are strict where pydantic's lax coercion would hide a mistake (docs/design.md, "Strict values"):
    no infinity or NaN in a float, no boolean where a number is expected. Integer-valued numbers still fill
    a float (``lr: 1``), and numeric strings still parse (YAML reads ``1e-3`` as a string).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is not None:
            problem = _bool_problem(cls.model_fields[info.field_name].annotation, value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    raise ValueError(f"unknown key {key!r}; {suggest(str(key), allowed)}")
        return data


class SyntheticSpec(StrictModel):
    """The procedural room dataset rendered on first use (cached in the store by its hash)."""

    n_train: int = Field(64, ge=1, description="training frames")
    n_test: int = Field(16, ge=1, description="test frames")
    height: int = Field(96, ge=16, description="frame height in pixels")
    width: int = Field(128, ge=16, description="frame width in pixels")
    seed: Seed = Field(0, description="scene generator seed")


class DataSpec(StrictModel):
    """Which dataset, which tasks, where it comes from, and the training augmentation."""

    dataset: str = Field("nyuv2", description="registered dataset name")
    tasks: tuple[str, ...] = Field(description="task subset, in head order")
    source: Literal["synthetic", "disk"] = Field(
        "synthetic", description="render synthetic data or read root"
    )
    root: str | None = not_hashed(
        None, description="dataset root on disk (source: disk); ~ and $VARS / ${VARS} are expanded when run"
    )
    fingerprint: str | None = Field(
        None,
        description="source: disk: sha256 of the data's content (`mtlprune data fingerprint`); identity "
        "follows it instead of the root. Filled in from the files when run; pinned here, it must match them",
    )
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    crop: tuple[int, int] = Field((64, 64), description="training crop (H, W)")
    scale: tuple[float, float] = Field((0.5, 1.5), description="random scale range [lo, hi) for training")
    flip: bool = Field(True, description="random horizontal flip for training")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the training listing held out for validation"
    )
    split_seed: Seed = Field(0, description="seed of the train/validation carve")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; {suggest(name, DATASETS.names())}")
        return name

    @field_validator("crop")
    @classmethod
    def _positive_crop(cls, crop: tuple[int, int]) -> tuple[int, int]:
        if min(crop) < 8:
            raise ValueError(f"crop sides must be >= 8 pixels, got {list(crop)}")
        return crop

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {list(scale)}")
        return scale

    @model_validator(mode="after")
    def _tasks_and_root(self) -> DataSpec:
        allowed = list(DATASETS.get(self.dataset).tasks)
        vocabulary = METRICS.get(self.dataset, {})
        if not vocabulary or any(task not in vocabulary for task in allowed):
            raise ValueError(
                f"dataset {self.dataset!r} has no metric vocabulary for its tasks {allowed}: a dataset "
                "plugin registers one with mtlprune.vocabulary.register_vocabulary (docs/adding_a_dataset.md)"
            )
        if not self.tasks:
            raise ValueError(f"tasks must name at least one task; allowed for {self.dataset}: {allowed}")
        for task in self.tasks:
            if task not in allowed:
                raise ValueError(
                    f"tasks: unknown task {task!r} for dataset {self.dataset!r}; {suggest(task, allowed)}"
                )
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be unique, got {list(self.tasks)}")
        if self.source == "disk" and not self.root:
            raise ValueError("source 'disk' needs root: the directory that holds the dataset listing")
        return self

    @model_validator(mode="after")
    def _fingerprint_format(self) -> DataSpec:
        """Only checked here: computing it reads the data, which fingerprint.py does once, with a cache."""
        if self.fingerprint is None:
            return self
        if self.source != "disk":
            raise ValueError(
                f"fingerprint is for source 'disk' (the content of root); source {self.source!r} is "
                "identified by its synthetic section"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.fingerprint):
            raise ValueError(
                f"fingerprint must be 64 lowercase hex digits (a sha256, as `mtlprune data "
                f"fingerprint` prints it), got {self.fingerprint!r}"
            )
        return self

    def resolved_root(self) -> Path:
        """``root`` with ``~`` and environment variables expanded; an unset variable is an error."""
        if self.root is None:
            raise ValueError("data.root is not set")
        expanded = os.path.expandvars(self.root)
        unset = re.findall(r"\$\{?(\w+)\}?", expanded)
        if unset:
            raise ValueError(
                f"data.root {self.root!r} uses environment variable(s) {', '.join(unset)} that are not set; "
                f"export {unset[0]}=/path/to/{self.dataset}"
            )
        return Path(expanded).expanduser()


class ArchSpec(StrictModel):
    """A registered architecture and its width multipliers."""

    name: str = Field("deeplab_resnet34", description="registered architecture name")
    width: float = Field(1.0, gt=0, le=4, description="backbone channel multiplier")
    head_width: float = Field(
        1.0,
        gt=0,
        le=4,
        description="head width multiplier: ASPP channels (1024 at 1.0) or ConvNeXt E (3072/1536 at 1.0)",
    )
    pretrained: str | None = not_hashed(
        None, description="local file of backbone weights; nothing is downloaded"
    )
    pretrained_sha256: str | None = Field(None, description="digest of `pretrained`; filled in from the file")

    @field_validator("name")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        if name not in ARCHS:
            raise ValueError(f"unknown architecture {name!r}; {suggest(name, ARCHS.names())}")
        return name

    @model_validator(mode="after")
    def _pretrained_digest(self) -> ArchSpec:
        """Identity follows the weights' content, not their path: the file's sha256 enters the hash."""
        if self.pretrained is None:
            if self.pretrained_sha256 is not None:
                raise ValueError("pretrained_sha256 is set but pretrained (the local weights file) is not")
            return self
        path = Path(self.pretrained).expanduser()
        if not path.is_file():
            raise ValueError(f"pretrained: {path} is not a file (weights load only from a local file)")
        digest = file_sha256(path)
        if self.pretrained_sha256 is not None and self.pretrained_sha256 != digest:
            raise ValueError(
                f"pretrained: {path} has sha256 {digest}, the config expects {self.pretrained_sha256}"
            )
        object.__setattr__(self, "pretrained_sha256", digest)
        return self


class TrainSpec(StrictModel):
    """An optimisation budget and recipe (used for the dense stage and for finetuning)."""

    steps: int = Field(ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas (AdapMTL uses beta1 = 0.5)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="coupled L2 (added to the gradient)")
    lr_schedule: Literal["constant", "step", "cosine"] = "step"
    lr_step: int | None = Field(None, ge=1, description="'step' schedule period; default steps // 5 (min 1)")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="'step' schedule factor")
    task_weights: dict[str, float] | None = Field(None, description="fixed loss weight per task; default 1")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="mixed precision of the forward/backward pass (autocast; fp16 adds a gradient scaler); "
        "part of identity, since it changes the numbers",
    )
    rewind_step: int | None = not_hashed(
        None,
        ge=0,
        description="dense stage only: save the weights after this many steps for rewinding (lth); "
        "default 5% of steps. Saving a snapshot changes no result, so it is not part of identity",
    )

    @property
    def rewind_at(self) -> int:
        """The step whose weights the dense stage saves as its rewind snapshot (0 = the initialisation)."""
        step = self.rewind_step if self.rewind_step is not None else max(1, round(0.05 * self.steps))
        if step > self.steps:
            raise ValueError(f"rewind_step {step} is beyond the {self.steps} training steps")
        return step

    @field_validator("rewind_step")
    @classmethod
    def _rewind_within_steps(cls, step: int | None, info: ValidationInfo) -> int | None:
        steps = info.data.get("steps")  # absent when steps itself was invalid
        if step is not None and steps is not None and step > steps:
            raise ValueError(
                f"{step} is beyond steps = {steps}: the rewind snapshot is saved during those steps "
                f"(at most {steps}, the final weights)"
            )
        return step

    @field_validator("task_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None:
            for task, w in weights.items():
                if w < 0:
                    raise ValueError(f"task_weights[{task!r}] must be >= 0, got {w}")
        return weights


ADAPMTL_EVAL_BATCH_SIZE = 16  # the reference's NYU-v2 test batch; its per-batch averages depend on it


PROTOCOL_REVISIONS = {
    "standard": 1,
    # 2: the reference's input side (OpenCV's uint8 bilinear resize of the test image, int(h·s) training
    # sizes; docs/protocols.md)
    "adapmtl": 2,
}


class EvalSpec(StrictModel):
    """How a trained model is evaluated, and under which protocol (docs/protocols.md).

    ``standard`` pools every metric, so its evaluation batch size is a pure speed knob (not hashed).
    ``adapmtl`` reproduces the reference, whose per-batch averages depend on the batch size: it always
    evaluates with the reference's 16, and setting another ``batch_size`` with it is an error.
    """

    protocol: Literal["standard", "adapmtl"] = Field(
        "standard",
        description="evaluation protocol: 'standard' (pooled, corrected) or 'adapmtl' (reference quirks)",
    )
    selection: Literal["last", "best_val"] = Field(
        "last",
        description="final weights: the last step, or the lowest validation loss (never the test split)",
    )
    val_every: int = Field(50, ge=1, description="steps between validation evaluations under best_val")
    batch_size: int = not_hashed(8, ge=1, description="evaluation batch size (metrics are pooled)")
    protocol_revision: int = Field(
        1,
        ge=1,
        description="the protocol's behaviour revision (PROTOCOL_REVISIONS), set from the protocol: above 1 "
        "it enters the run id, so results of an older version of the protocol are not reused",
    )

    @model_validator(mode="after")
    def _protocol_revision(self) -> EvalSpec:
        current = PROTOCOL_REVISIONS[self.protocol]
        if "protocol_revision" in self.model_fields_set and self.protocol_revision != current:
            raise ValueError(
                f"protocol_revision: {self.protocol_revision}, but protocol {self.protocol!r} is at revision "
                f"{current} (set by the protocol; leave the key out)"
            )
        object.__setattr__(self, "protocol_revision", current)
        return self

    @model_validator(mode="after")
    def _adapmtl_batch(self) -> EvalSpec:
        if (
            self.protocol == "adapmtl"
            and "batch_size" in self.model_fields_set
            and self.batch_size != ADAPMTL_EVAL_BATCH_SIZE
        ):
            raise ValueError(
                f"batch_size {self.batch_size} with protocol 'adapmtl': that protocol averages per-batch "
                "metrics as the reference does and always evaluates with batches of "
                f"{ADAPMTL_EVAL_BATCH_SIZE}; leave batch_size unset"
            )
        return self

    @property
    def effective_batch_size(self) -> int:
        """The batch size evaluation actually uses (fixed by the ``adapmtl`` protocol)."""
        return ADAPMTL_EVAL_BATCH_SIZE if self.protocol == "adapmtl" else self.batch_size


SLURM_TIME = re.compile(  # minutes, MM:SS, H:MM:SS, or D-H, D-H:MM, D-H:MM:SS (sbatch --time)
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
SLURM_MANAGED = {"array", "output", "error", "signal", "job-name", "dependency", "open-mode", "wckey"}


class SlurmSpec(StrictModel):
    """Resources of each Slurm array task (one stage per task) for ``mtlprune run --executor slurm``."""

    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's default")
    time: str = Field(
        "4:00:00",
        description="time limit per stage task in Slurm's format (minutes, H:MM:SS, D-H[:MM[:SS]]); a stage "
        "that needs longer is requeued and resumes from its checkpoint",
    )
    gpus_per_task: int = Field(1, ge=0, description="GPUs of each task (0 for a CPU-only cluster)")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores of each task (loader workers + torch threads)")
    mem: str | None = Field(
        None, pattern=r"^\d+[KMGT]?$", description="memory of each task as sbatch --mem takes it, e.g. '32G'"
    )
    account: str | None = Field(None, description="sbatch --account (the allocation to charge)")
    qos: str | None = Field(None, description="sbatch --qos (quality of service)")
    constraint: str | None = Field(None, description="sbatch --constraint (node features, e.g. 'a100')")
    max_parallel: int = Field(
        64, ge=1, description="array tasks running at once per array (slurm_array_parallelism)"
    )
    max_requeue: int = Field(
        3, ge=0, description="requeues after reaching the time limit before a stage is left (preemption free)"
    )
    signal_delay_s: int = Field(
        120, ge=10, description="seconds before the time limit at which a task is signalled to requeue itself"
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run before each task (module load ..., source .venv/bin/activate)",
    )
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="further sbatch options, name: value (e.g. {mail-type: END})"
    )

    @field_validator(
        "partition", "time", "mem", "account", "qos", "constraint", "setup", "extra", mode="before"
    )
    @classmethod
    def _single_line(cls, value: Any) -> Any:
        """Every text that ends up in the sbatch script is one line of printable text: a newline (or any
        control character) would end an ``#SBATCH`` directive or a setup command early."""
        texts: list[tuple[str, Any]] = [("", value)]
        if isinstance(value, list):
            texts = [(f"[{i}] ", item) for i, item in enumerate(value)]
        elif isinstance(value, dict):
            texts = [
                pair
                for key, item in value.items()
                for pair in ((f"key {key!r} ", key), (f"[{key!r}] ", item))
            ]
        for where, text in texts:
            if not isinstance(text, str):
                continue
            for offset, char in enumerate(text):
                if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
                    raise ValueError(
                        f"{where}holds the control character {char!r} at offset {offset}: a Slurm value is "
                        "one line of text (it is written into the sbatch script)"
                        + ("; give one shell command per setup item" if isinstance(value, list) else "")
                    )
        return value

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        if not SLURM_TIME.match(value.strip()):
            raise ValueError(
                f"time {value!r} is not a Slurm time limit: use minutes ('90'), 'H:MM:SS' ('4:00:00') or "
                "'D-H[:MM[:SS]]' ('1-12:00:00')"
            )
        return value.strip()

    @field_validator("extra")
    @classmethod
    def _extra_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
                raise ValueError(f"extra sbatch option {key!r} must be a long option name like 'mail-type'")
            if key.replace("_", "-") in SLURM_MANAGED:
                raise ValueError(f"extra sbatch option {key!r} is set by the benchmark itself; remove it")
        return value

    @property
    def timeout_min(self) -> int:
        """The time limit in whole minutes (seconds round up), as submitit takes it."""
        match = SLURM_TIME.match(self.time)
        assert match is not None  # validated
        g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
        if "days" in g:
            seconds = g["days"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
        elif "c" in g:  # H:MM:SS
            seconds = g["a"] * 3600 + g["b"] * 60 + g["c"]
        elif "b" in g:  # MM:SS
            seconds = g["a"] * 60 + g["b"]
        else:  # minutes
            seconds = g["a"] * 60
        return max(1, -(-seconds // 60))


class RuntimeSpec(StrictModel):
    """Where and how fast to run; never part of identity."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(
        1,
        ge=1,
        description="local worker processes running stages in parallel (mtlprune run --workers overrides); "
        "torch threads are divided between them",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for the host-side work of a CUDA stage; a CPU stage always runs on one "
        "thread, so that its numbers do not depend on the machine (docs/design.md, Determinism)",
    )
    log_every: int = Field(10, ge=1, description="steps between log.jsonl records")
    measure_latency: bool = Field(False, description="time the dense and the pruned model's forward pass")
    num_workers: int = Field(
        0, ge=0, description="loader worker processes (batches are identical for any value)"
    )
    tensorboard: bool = Field(
        False, description="also write every log.jsonl record to TensorBoard event files (<run>/tensorboard/)"
    )
    save_cell_models: bool = Field(
        False,
        description="also keep each cell's final weights (model.pt); masks are always kept (masks.npz)",
    )
    checkpoint_every: int = Field(
        100,
        ge=0,
        description="optimizer steps between in-stage checkpoints (<run>/checkpoint.pt); 0: only at phase "
        "boundaries. A killed stage resumes from its last checkpoint",
    )
    channels_last: bool = Field(False, description="channels-last memory format for model and inputs (GPU)")
    keep_freed_memory: bool = Field(
        True,
        description="keep memory a step frees in the process for the next step (glibc malloc: no mmap, no "
        "trim), instead of faulting in fresh pages every step; no effect on numbers (docs/accounting.md)",
    )
    pin_memory: bool | None = Field(None, description="pinned host memory for batches; default: on with CUDA")
    slurm: SlurmSpec = Field(
        default_factory=SlurmSpec, description="resources of each task under --executor slurm (docs/slurm.md)"
    )


CONTROL_METHOD = "dense-finetune"


def is_control(method_name: str) -> bool:
    """Whether a registered method is a control row (``control = True``: no pruning, target 0)."""
    return bool(getattr(METHODS.get(method_name), "control", False))


def starts_from_dense(method: MethodSpec) -> bool:
    """Whether a configured method starts from the dense checkpoint (its params may choose)."""
    return METHODS.get(method.name)(method.parsed_params()).starts_from == "dense"


class MethodSpec(StrictModel):
    """A registered pruning method and its parameters (validated against the method's Params model)."""

    name: str = Field(description="registered method name")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's Params; defaults dropped")
    revision: int = Field(
        1,
        ge=1,
        description="the method's behaviour revision (PruningMethod.revision), set from the registry: "
        "above 1 it enters the run id, so results of an older behaviour are not reused",
    )

    @model_validator(mode="after")
    def _validate_params(self) -> MethodSpec:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; {suggest(self.name, METHODS.names())}")
        current = int(getattr(METHODS.get(self.name), "revision", 1))
        if "revision" in self.model_fields_set and self.revision != current:
            raise ValueError(
                f"revision: {self.revision}, but method {self.name!r} is at revision {current} (the method "
                "sets it; leave the key out)"
            )
        object.__setattr__(self, "revision", current)
        params_model = METHODS.get(self.name).Params
        try:
            parsed = params_model.model_validate(self.params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                + ("" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})")
                for e in exc.errors()
            )
            raise ValueError(f"method {self.name!r}: {problems}") from None
        # Store the validated values without defaults: the hash then only sees what differs from them.
        object.__setattr__(self, "params", parsed.model_dump(mode="json", exclude_defaults=True))
        return self

    def parsed_params(self) -> BaseModel:
        return METHODS.get(self.name).Params.model_validate(self.params)

    @property
    def label(self) -> str:
        """Display name: the method, plus its non-default params."""
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"


class DenseSpec(StrictModel):
    """The dense stage: trained once and shared by every method and sparsity of the same setting."""

    stage: Literal["dense"] = always_hashed("dense")
    schema_version: int = always_hashed(SCHEMA_VERSION)
    data: DataSpec
    arch: ArchSpec
    train: TrainSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    seed: Seed

    @property
    def run_id(self) -> str:
        return spec_hash(self)


class RunSpec(StrictModel):
    """One cell of the matrix: a method at a target sparsity on one setting and seed."""

    stage: Literal["cell"] = always_hashed("cell")
    schema_version: int = always_hashed(SCHEMA_VERSION)
    data: DataSpec
    arch: ArchSpec
    train: TrainSpec
    finetune: TrainSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    method: MethodSpec
    target_sparsity: float = Field(
        ge=0.0, lt=1.0, description="fraction of prunable weights to remove; 0 only for the control row"
    )
    seed: Seed

    @model_validator(mode="after")
    def _control_at_zero(self) -> RunSpec:
        control = is_control(self.method.name)
        if control and self.target_sparsity != 0.0:
            raise ValueError(
                f"method {self.method.name!r} is the unpruned control: its target_sparsity must be 0, "
                f"got {self.target_sparsity}"
            )
        if not control and self.target_sparsity == 0.0:
            raise ValueError(f"target_sparsity must be > 0 for method {self.method.name!r}")
        return self

    @property
    def run_id(self) -> str:
        return spec_hash(self)

    def dense(self) -> DenseSpec:
        return DenseSpec(data=self.data, arch=self.arch, train=self.train, eval=self.eval, seed=self.seed)

    def extra_stages(self) -> list[DenseSpec]:
        """The dense stages this cell's method asks for besides :meth:`dense` (``PruningMethod.extra_stages``:
        ECS's single-task base), in the method's order; planned once per setting and run before the cell."""
        method = METHODS.get(self.method.name)(self.method.parsed_params())
        return list(method.extra_stages(self))

    def needs(self) -> list[DenseSpec]:
        """Every dense stage that must be done before this cell runs: its dense stage, then the extra ones."""
        return [self.dense(), *self.extra_stages()]

    def control(self) -> RunSpec:
        """The control cell of this cell's setting: the dense model finetuned on the same budget, unpruned."""
        return self.model_copy(update={"method": MethodSpec(name=CONTROL_METHOD), "target_sparsity": 0.0})


class MatrixSpec(StrictModel):
    """The benchmark matrix: datasets × archs × seeds × methods × sparsities, with shared settings."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="matrix name (report folder)")
    datasets: list[DataSpec] = Field(min_length=1)
    archs: list[ArchSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    sparsities: list[Fraction] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    train: TrainSpec
    finetune: TrainSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    controls: bool = Field(
        True,
        description=f"add the control row ({CONTROL_METHOD!r}: the dense model finetuned on the finetune "
        "budget, unpruned) once per setting and seed when a method starts from the dense model",
    )
    stl_reference: bool = Field(
        False,
        description="also plan one single-task dense stage per task of each setting and seed (the same "
        "training on that task alone): the single-task models that `delta_m_stl` compares every cell with",
    )
    runtime: RuntimeSpec = not_hashed(RuntimeSpec())

    @field_validator("methods")
    @classmethod
    def _no_explicit_control(cls, methods: list[MethodSpec]) -> list[MethodSpec]:
        for i, method in enumerate(methods):
            if is_control(method.name):
                raise ValueError(
                    f"methods[{i}]: {method.name!r} is the control row; it is added once per setting and "
                    "seed by `controls: true` (the default), not listed as a method"
                )
        return methods

    @field_validator("sparsities", "seeds")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @model_validator(mode="after")
    def _selection_needs_validation(self) -> MatrixSpec:
        if self.eval.selection == "best_val":
            for i, data in enumerate(self.datasets):
                if data.val_fraction == 0:
                    raise ValueError(f"eval.selection 'best_val' needs datasets[{i}].val_fraction > 0")
        return self

    @model_validator(mode="after")
    def _task_weights_name_tasks(self) -> MatrixSpec:
        for section in ("train", "finetune"):
            weights = getattr(self, section).task_weights or {}
            for i, data in enumerate(self.datasets):
                unknown = sorted(set(weights) - set(data.tasks))
                if unknown:
                    raise ValueError(
                        f"{section}.task_weights names {unknown}, which datasets[{i}] does not train "
                        f"(its tasks: {list(data.tasks)})"
                    )
        return self

    @model_validator(mode="after")
    def _methods_fit_settings(self) -> MatrixSpec:
        """Every method can run every setting, checked before any work: a method that plans stages of its
        own (ECS's single-task base) can plan them, and its ``check_spec`` hook (a budget it needs: lth's
        retraining after the rewind step) accepts the cell, at every dataset and sparsity."""
        for i, method in enumerate(self.methods):
            instance = METHODS.get(method.name)(method.parsed_params())
            check = getattr(instance, "check_spec", None)
            for j, data in enumerate(self.datasets):
                for k, sparsity in enumerate(self.sparsities):
                    cell = RunSpec(
                        data=data,
                        arch=self.archs[0],
                        train=self.train,
                        finetune=self.finetune,
                        eval=self.eval,
                        method=method,
                        target_sparsity=sparsity,
                        seed=self.seeds[0],
                    )
                    try:
                        if k == 0:
                            instance.extra_stages(cell)
                        if check is not None:
                            check(cell)
                    except ValueError as exc:
                        raise ValueError(f"methods[{i}] ({method.label}) with datasets[{j}]: {exc}") from None
        return self

    def expand(self) -> list[RunSpec]:
        """Cells in a deterministic order: datasets, archs, seeds, methods, sparsities (as written); with
        ``controls``, each (dataset, arch, seed) block ends with its control cell when a method of the matrix
        starts from the dense model."""
        control = self.controls and any(starts_from_dense(m) for m in self.methods)
        cells = []
        for data, arch, seed in itertools.product(self.datasets, self.archs, self.seeds):
            block = [
                RunSpec(
                    data=data,
                    arch=arch,
                    train=self.train,
                    finetune=self.finetune,
                    eval=self.eval,
                    method=method,
                    target_sparsity=sparsity,
                    seed=seed,
                )
                for method, sparsity in itertools.product(self.methods, self.sparsities)
            ]
            cells += block + ([block[0].control()] if control else [])
        return cells

    def dense_stages(self) -> list[DenseSpec]:
        """The distinct dense stages the cells need (their shared dense stages and any stage a method asks
        for, :meth:`RunSpec.extra_stages`), in first-use order; with ``stl_reference``, then one single-task
        stage per task of each multi-task dense stage (shared with a method's identical stage, e.g. ECS's
        base)."""
        seen: dict[str, DenseSpec] = {}
        for cell in self.expand():
            for dense in cell.needs():
                seen.setdefault(dense.run_id, dense)
        if self.stl_reference:
            for dense in [d for d in seen.values() if len(d.data.tasks) > 1]:
                for task in dense.data.tasks:
                    single = dense.model_copy(
                        update={"data": dense.data.model_copy(update={"tasks": (task,)})}
                    )
                    seen.setdefault(single.run_id, single)
        return list(seen.values())
