"""Plan a matrix into stages and run them idempotently into the store.

Stages: one dense stage per (data, arch, train, eval, seed), shared by every method and sparsity; one cell
per RunSpec. A stage whose ``result.json`` exists is skipped; a failing stage records its error in
``status.json`` and the rest of the matrix goes on.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlprune.checkpoint import CHECKPOINT, StageCheckpoint
from mtlprune.context import MethodContext
from mtlprune.convergence import convergence_window, loss_convergence
from mtlprune.costs import count_flops, measure_latency
from mtlprune.data import build_dataset
from mtlprune.determinism import seed_everything, stage_environment, stage_seed
from mtlprune.divergence import Divergence, DivergenceGuard, check_final_metrics
from mtlprune.estimate import StageKey
from mtlprune.evaluate import evaluate
from mtlprune.maskio import MASKS, TASK_MASKS, write_masks, write_task_masks
from mtlprune.models.mtl import MTLModel
from mtlprune.models.pretrained import load_backbone_weights
from mtlprune.provenance import code_identity, device_name, provenance, timing
from mtlprune.records import CellResult, DenseResult, StatusRecord
from mtlprune.registry import ARCHS, DATASETS, METHODS
from mtlprune.sparsity import sparsity_report
from mtlprune.spec import DenseSpec, MatrixSpec, RunSpec, RuntimeSpec, semantic_dump
from mtlprune.spec.select import Selection
from mtlprune.store import SPEC, Store, atomic_write_bytes, atomic_write_json
from mtlprune.train import train
from mtlprune.trivial import fit_trivial
from mtlprune.vocabulary import direction

Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Plan:
    dense: list[DenseSpec]
    cells: list[RunSpec]


def plan(matrix: MatrixSpec, only: Selection | None = None) -> Plan:
    """The matrix's dense stages and cells, in plan order; ``only`` keeps the selected ones (``--only``)."""
    dense, cells = matrix.dense_stages(), matrix.expand()
    if only:
        dense, cells = only.select(dense, cells, f"matrix {matrix.name!r}")
    return Plan(dense=dense, cells=cells)


def requirements(matrix: MatrixSpec) -> list[str]:
    """What running ``matrix`` needs, checked without touching any data: roots, model sizes, compute."""
    lines: list[str] = []
    seen: set[str] = set()
    for data in matrix.datasets:
        if data.source == "synthetic":
            s = data.synthetic
            lines.append(
                f"data {data.dataset}: synthetic, rendered into the store on first use "
                f"({s.n_train} train + {s.n_test} test frames of {s.height}×{s.width})"
            )
            continue
        if data.root in seen:
            continue
        seen.add(str(data.root))
        listing = DATASETS.get(data.dataset).listing_name
        try:
            root = data.resolved_root()
        except ValueError as exc:
            lines.append(f"data {data.dataset}: MISSING: {exc}")
            continue
        if (root / listing).is_file():
            lines.append(f"data {data.dataset}: {root} (found {listing})")
        else:
            lines.append(
                f"data {data.dataset}: MISSING: {root / listing} does not exist; see docs/datasets.md, then "
                f"check it with: mtlprune data verify --dataset {data.dataset} --root {root}"
            )
    dense = matrix.dense_stages()
    for stage in {(d.arch.name, d.arch.width, d.arch.head_width, d.data.tasks): d for d in dense}.values():
        with torch.device("meta"):  # shapes only: no memory, no time, even for full-width models
            model = build_model(stage)
        params = sum(p.numel() for p in model.parameters())
        prunable = sum(p.numel() for p in model.prunable_parameters().values())
        lines.append(
            f"model {stage.arch.name} width {stage.arch.width:g}/{stage.arch.head_width:g} "
            f"({', '.join(stage.data.tasks)}): {params / 1e6:.2f}M parameters, {prunable / 1e6:.2f}M prunable"
        )
    cells, train, finetune = matrix.expand(), matrix.train, matrix.finetune
    lines.append(
        f"compute: {len(dense)} dense stage(s) × {train.steps} steps (batch {train.batch_size}), then "
        f"{len(cells)} cell(s), each within its method's budget (finetune {finetune.steps} steps, batch "
        f"{finetune.batch_size}); protocol {matrix.eval.protocol}; device {matrix.runtime.device}"
    )
    return lines


def stage_keys(the_plan: Plan) -> list[StageKey]:
    """Each stage with what its wall time depends on, for the cost estimate of ``mtlprune plan``."""
    keys = [
        StageKey(
            d.run_id, "dense", (d.data.dataset, d.arch.name, d.arch.width, d.arch.head_width, d.train.steps)
        )
        for d in the_plan.dense
    ]
    for c in the_plan.cells:
        key = (c.data.dataset, c.arch.name, c.arch.width, c.method.label, c.train.steps, c.finetune.steps)
        keys.append(StageKey(c.run_id, "cell", key))
    return keys


def resolve_device(runtime: RuntimeSpec) -> torch.device:
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def build_model(spec: DenseSpec | RunSpec) -> MTLModel:
    channels = DATASETS.get(spec.data.dataset).task_channels
    factory = ARCHS.get(spec.arch.name)
    return factory(
        {t: channels[t] for t in spec.data.tasks}, width=spec.arch.width, head_width=spec.arch.head_width
    )


def save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint missing")
    return torch.load(path, map_location="cpu", weights_only=True)


class JsonlLogger:
    """Appends one JSON record per `every` steps (and every non-step record) to log.jsonl.

    With ``tensorboard`` the same records also go to TensorBoard event files in ``<run>/tensorboard/``:
    every numeric value as ``<phase>/<key>`` against a step counter that keeps increasing across phases and
    rounds (a method's steps restart at 0 in each ``ctx.train`` call).
    """

    def __init__(
        self, path: Path, every: int, progress: Progress | None = None, tensorboard: bool = False
    ) -> None:
        self.path, self.every, self.progress = path, every, progress
        self.fh = path.open("a", encoding="utf-8")
        self.writer: Any = None
        self.tensorboard = tensorboard
        self.global_step = 0
        if tensorboard:
            self.writer = self._writer(purge_step=None)

    def _writer(self, purge_step: int | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked

        return SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=purge_step)

    def position(self) -> dict[str, int]:
        """Where the log is now (a checkpoint stores it; resuming rewinds to it)."""
        self.fh.flush()
        return {"bytes": self.fh.tell(), "global_step": self.global_step}

    def rewind(self, position: dict[str, int]) -> None:
        """Drop everything logged after ``position``: a resumed stage logs those steps again.

        TensorBoard events are append-only; a new writer with ``purge_step`` makes TensorBoard discard the
        superseded events at and after that step when it reads the directory.
        """
        self.fh.flush()
        self.fh.truncate(position["bytes"])
        self.fh.seek(position["bytes"])
        self.global_step = position["global_step"]
        if self.writer is not None:
            self.writer.close()
            self.writer = self._writer(purge_step=self.global_step)

    def __call__(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if self.progress is not None and step is not None:
            self.progress(step, record)
        if step is not None:
            self.global_step += 1
        if step is None or step % self.every == 0:
            self.fh.write(json.dumps(record, sort_keys=True) + "\n")
            self.fh.flush()
            if self.writer is not None:
                phase = str(record.get("phase", "log"))
                for key, value in record.items():
                    if key not in ("step", "phase") and isinstance(value, int | float):
                        self.writer.add_scalar(f"{phase}/{key}", float(value), self.global_step)

    def close(self) -> None:
        self.fh.close()
        if self.writer is not None:
            self.writer.close()


def _begin(store: Store, run_id: str, spec: DenseSpec | RunSpec, extra: dict[str, Any]) -> Path:
    if spec.data.source == "disk" and spec.data.fingerprint is None:
        raise ValueError(
            f"data.fingerprint is not set for the {spec.data.dataset} data at {spec.data.root}: the run id "
            "would not follow the data's content; fill it in with mtlprune.fingerprint.resolve_data(matrix, "
            "store root) first (mtlprune run does)"
        )
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_id": run_id,
        "spec": spec.model_dump(mode="json"),
        "identity": semantic_dump(spec),
        **extra,
    }
    atomic_write_json(run_dir / SPEC, payload)
    store.write_status(
        run_id, status="running", host=socket.gethostname(), pid=os.getpid(), started=time.time()
    )
    return run_dir


def _splits(spec: DenseSpec | RunSpec, store: Store) -> tuple[Any, Any, Any]:
    """Train, validation (None without a val_fraction) and test sets, built as the protocol prescribes."""
    protocol = spec.eval.protocol
    train_set = build_dataset(spec.data, store.root, "train", seed=spec.seed, protocol=protocol)
    val_set = (
        build_dataset(spec.data, store.root, "val", protocol=protocol) if spec.data.val_fraction > 0 else None
    )
    return train_set, val_set, build_dataset(spec.data, store.root, "test", protocol=protocol)


def _evaluate(model: Any, test_set: Any, spec: DenseSpec | RunSpec, device: torch.device) -> dict[str, float]:
    return evaluate(model, test_set, spec.eval.effective_batch_size, device, protocol=spec.eval.protocol)


def run_dense(
    spec: DenseSpec, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> DenseResult:
    """Train the dense stage (or resume it), evaluate it and its trivial predictor, write result.json."""
    if store.is_done(spec.run_id):
        return store.result(spec.run_id)
    device = resolve_device(runtime)
    with stage_environment(device, runtime.num_threads) as determinism:
        return _run_dense(spec, store, runtime, device, determinism, progress)


def _run_dense(
    spec: DenseSpec,
    store: Store,
    runtime: RuntimeSpec,
    device: torch.device,
    determinism: dict[str, Any],
    progress: Progress | None,
) -> DenseResult:
    run_id = spec.run_id
    run_dir = _begin(store, run_id, spec, {})
    start = time.time()
    train_set, val_set, test_set = _splits(spec, store)
    seed_everything(stage_seed(run_id))
    torch.manual_seed(spec.seed)  # the initialisation: a function of the seed alone, shared by every cell
    model = build_model(spec)
    if spec.arch.pretrained is not None:
        load_backbone_weights(model.backbone, spec.arch.pretrained)
    save_state(run_dir / "init.pt", model.state_dict())
    logger, checkpoint = _open_log(run_dir, runtime, progress)
    resume = checkpoint.take(1)
    # The training loss of every step in the convergence window (mtlprune.convergence), checkpointed with the
    # stage so that a resumed stage measures exactly what an uninterrupted one would.
    window = convergence_window(spec.train.steps)
    tail: list[tuple[int, float]] = [] if resume is None else [tuple(p) for p in resume["owner"]["tail"]]
    call = checkpoint.for_call(1, lambda: {"tail": [list(p) for p in tail]})
    call.resume = resume
    rewind_at = spec.train.rewind_at
    if rewind_at == 0:
        save_state(run_dir / "rewind.pt", model.state_dict())

    def on_step(step: int, scalars: dict[str, float]) -> None:
        if step + 1 == rewind_at:  # the weights after `rewind_at` optimizer steps, for rewinding methods
            save_state(run_dir / "rewind.pt", model.state_dict())
        if step >= window:
            tail.append((step, scalars["loss"]))
        logger({"phase": "dense", "step": step, **scalars})

    guard = DivergenceGuard()  # its reference: this stage's own step-0 task losses (checkpointed)
    try:
        outcome = train(
            model,
            dataset_name=spec.data.dataset,
            train_set=train_set,
            spec=spec.train,
            seed=spec.seed,
            device=device,
            on_step=on_step,
            val_set=val_set,
            selection=spec.eval.selection,
            val_every=spec.eval.val_every,
            num_workers=runtime.num_workers,
            protocol=spec.eval.protocol,
            checkpoint=call,
            channels_last=runtime.channels_last,
            pin_memory=_pin_memory(runtime, device),
            guard=guard,
        )
    finally:
        logger.close()
    save_state(run_dir / "model.pt", model.state_dict())
    channels = DATASETS.get(spec.data.dataset).task_channels
    # Fitted on the training split before the test split is read (the test split is read last).
    constant = fit_trivial(
        spec.data.dataset, {t: channels[t] for t in spec.data.tasks}, train_set, spec.eval.protocol
    )
    metrics = _evaluate(model, test_set, spec, device)
    trivial = _evaluate(constant, test_set, spec, torch.device("cpu"))
    check_final_metrics(metrics, trivial, direction)
    convergence = loss_convergence(tail, spec.train.steps)
    result = DenseResult(
        run_id=run_id,
        metrics=metrics,
        trivial_metrics=trivial,
        initial_losses=guard.reference,
        convergence=convergence,
        sparsity=sparsity_report(model),
        **measure_costs(model, test_set, runtime, device),
        steps_total=outcome.steps,
        rewind_step=rewind_at,
        selection={"rule": spec.eval.selection, "selected_step": outcome.selected_step},
        splits=_split_sizes(train_set, val_set, test_set),
        **_provenance(start, device, resume, determinism),
    )
    _finish(store, run_id, result, checkpoint)
    return result


def _log_records(run_dir: Path, phase: str) -> list[dict[str, Any]]:
    """The step records of one phase in a stage's log.jsonl (what the convergence measure reads)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if r.get("phase") == phase and "step" in r]


def dense_initial_losses(store: Store, dense_id: str) -> dict[str, float] | None:
    """The untrained network's task losses of a dense stage (its result, else its log's step-0 record)."""
    losses = store.result(dense_id).initial_losses
    if losses:
        return {t: float(v) for t, v in losses.items()}
    for record in _log_records(store.run_dir(dense_id), "dense"):
        if record["step"] == 0:
            found = {k.removeprefix("loss."): float(v) for k, v in record.items() if k.startswith("loss.")}
            return found or None
    return None


def _open_log(
    run_dir: Path, runtime: RuntimeSpec, progress: Progress | None
) -> tuple[JsonlLogger, StageCheckpoint]:
    """The stage's log and checkpoint; without a checkpoint the stage starts over with a fresh log."""
    if not (run_dir / CHECKPOINT).is_file():
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    logger = JsonlLogger(run_dir / "log.jsonl", runtime.log_every, progress, runtime.tensorboard)
    try:
        return logger, StageCheckpoint(run_dir, runtime.checkpoint_every, logger)
    except Exception:
        logger.close()
        raise


def _pin_memory(runtime: RuntimeSpec, device: torch.device) -> bool:
    return device.type == "cuda" if runtime.pin_memory is None else runtime.pin_memory


def _provenance(
    start: float,
    device: torch.device,
    resume: dict[str, Any] | None,
    determinism: dict[str, Any],
    method_code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where, when and with what the result was produced (mtlprune.provenance), and whether it resumed."""
    end = time.time()
    extra = {} if method_code is None else {"method_code": method_code}
    return {
        "wall_s": end - start,
        "device": str(device),
        "determinism": determinism,
        "provenance": {
            **provenance(device_name(str(device))),
            **timing(start, end),
            # CPU float reductions depend on the thread count: mtlprune.determinism fixes it per stage
            "torch_threads": torch.get_num_threads(),
            **extra,
        },
        "resumed_from": None if resume is None else {"call": resume["call"], "step": resume["step"]},
    }


def _finish(store: Store, run_id: str, result: DenseResult | CellResult, checkpoint: StageCheckpoint) -> None:
    """Write the result, mark the stage done, and drop its checkpoint (in that order: a kill in between
    leaves a finished stage with a stale checkpoint, never a lost result)."""
    if checkpoint.loaded is not None:
        raise RuntimeError(
            f"{checkpoint.path} belongs to train() call {checkpoint.resume_call}, which this stage never "
            "made: the method's code changed since the checkpoint; delete it to restart the stage"
        )
    store.write_result(run_id, result)
    store.write_status(run_id, status="done", finished=time.time())
    checkpoint.remove()


def run_cell(
    spec: RunSpec, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> CellResult:
    """Run one cell's method on its dense stage's checkpoint (or resume it), evaluate, write result.json."""
    if store.is_done(spec.run_id):
        return store.result(spec.run_id)
    device = resolve_device(runtime)
    with stage_environment(device, runtime.num_threads) as determinism:
        return _run_cell(spec, store, runtime, device, determinism, progress)


def _run_cell(
    spec: RunSpec,
    store: Store,
    runtime: RuntimeSpec,
    device: torch.device,
    determinism: dict[str, Any],
    progress: Progress | None,
) -> CellResult:
    run_id = spec.run_id
    dense_spec = spec.dense()
    dense_id = dense_spec.run_id
    if not store.is_done(dense_id):
        raise RuntimeError(f"dense stage {dense_id} has no result; it must finish before cell {run_id}")
    method_cls = METHODS.get(spec.method.name)
    extra = {"dense_run_id": dense_id, "control_run_id": spec.control().run_id}
    run_dir = _begin(store, run_id, spec, extra)
    start = time.time()
    train_set, val_set, test_set = _splits(spec, store)
    model = build_model(spec)
    method = method_cls(spec.method.parsed_params())
    checkpoint = "model.pt" if method.start == "dense" else "init.pt"
    model.load_state_dict(load_state(store.run_dir(dense_id) / checkpoint))
    model.to(device)
    logger, checkpoint = _open_log(run_dir, runtime, progress)
    resume = checkpoint.loaded
    ctx = MethodContext(
        model=model,
        spec=spec,
        train_set=train_set,
        device=device,
        logger=logger,
        val_set=val_set,
        num_workers=runtime.num_workers,
        dense_dir=store.run_dir(dense_id),
        checkpoint=checkpoint,
        channels_last=runtime.channels_last,
        pin_memory=_pin_memory(runtime, device),
        initial_losses=dense_initial_losses(store, dense_id),
    )
    seed_everything(stage_seed(run_id))  # whatever ran before in this process, the method sees one world
    try:
        method.run(ctx)
    finally:
        logger.close()
    report = sparsity_report(model, requested=spec.target_sparsity)
    _check_sparsity(spec, method, report["achieved_sparsity"], ctx)
    if ctx.masks is not None:
        write_masks(run_dir / MASKS, ctx.masks)
    if ctx.task_masks:
        write_task_masks(run_dir / TASK_MASKS, ctx.task_masks)
    if runtime.save_cell_models:
        save_state(run_dir / "model.pt", model.state_dict())
    dense_result = store.result(dense_id)
    dense_steps = dense_result.steps_total if method.start == "dense" else 0
    metrics = _evaluate(model, test_set, spec, device)
    check_final_metrics(metrics, dense_result.trivial_metrics, direction)
    result = CellResult(
        run_id=run_id,
        dense_run_id=dense_id,
        control_run_id=extra["control_run_id"],
        metrics=metrics,
        sparsity=report,
        **measure_costs(model, test_set, runtime, device, dense_result=dense_result),
        steps_total=dense_steps + ctx.steps_used,
        steps_method=ctx.steps_used,
        starts_from=method.start,
        method_state=ctx.recorded,
        selection={"rule": spec.eval.selection, "selected_step": ctx.selected_step},
        splits=_split_sizes(train_set, val_set, test_set),
        **_provenance(start, device, resume, determinism, code_identity(method_cls)),
    )
    _finish(store, run_id, result, checkpoint)
    return result


def _split_sizes(train_set: Any, val_set: Any, test_set: Any) -> dict[str, int]:
    return {"train": len(train_set), "val": 0 if val_set is None else len(val_set), "test": len(test_set)}


def measure_costs(
    model: MTLModel,
    test_set: Any,
    runtime: RuntimeSpec,
    device: torch.device,
    dense_result: DenseResult | None = None,
) -> dict[str, Any]:
    """Theoretical FLOPs at the evaluation resolution and, when asked, measured latency.

    Latency is measured as it is: masked weights are stored and multiplied as dense tensors, so a pruned
    model is no faster than the dense one unless a sparse kernel is used; the result says so.
    """
    sample = test_set[0]
    input_hw = tuple(sample["input"].shape[-2:])
    output_hw = tuple(sample[model.tasks[0]].shape[-2:])
    out: dict[str, Any] = {"costs": {"input_hw": list(input_hw), **count_flops(model, input_hw, output_hw)}}
    if runtime.measure_latency:
        latency = measure_latency(model, input_hw, device=device)
        latency["note"] = "masks are applied to dense tensors: no speed-up is expected from masking alone"
        if dense_result is not None and dense_result.latency is not None:
            latency["dense_latency_ms"] = dense_result.latency["latency_ms"]
        out["latency"] = latency
    return out


def _check_sparsity(spec: RunSpec, method: Any, achieved: float, ctx: MethodContext) -> None:
    """A method that misses its target, or un-zeroes a pruned weight, fails its cell loudly."""
    if ctx.masks is not None:
        params = ctx.prunable()
        for name, mask in ctx.masks.items():
            leaked = int((params[name].detach().cpu()[~mask] != 0).sum())
            if leaked:
                raise RuntimeError(
                    f"{spec.method.name}: {leaked} pruned weights of {name} are non-zero after training"
                )
    tolerance = method.sparsity_tolerance  # an instance may derive it from its params
    if abs(achieved - spec.target_sparsity) > tolerance:
        raise RuntimeError(
            f"{spec.method.name}: achieved sparsity {achieved:.4f} misses target {spec.target_sparsity} "
            f"by more than the method's tolerance {tolerance}"
        )


LOG_TAIL_LINES = 20


def failure_kind(exc: BaseException) -> str:
    """``diverged`` for a non-finite loss, ``oom`` for an out-of-memory error, ``error`` otherwise."""
    if isinstance(exc, Divergence):
        return "diverged"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return "oom"  # allocator errors of other backends (MPS, CPU allocators) say so in the message
    return "error"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"): status.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a stage's log.jsonl (empty when it has none)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def record_failure(store: Store, run_id: str, exc: BaseException, kind: str | None = None) -> StatusRecord:
    """Mark a stage failed in its status.json: kind, error, traceback, the last log lines; returns it."""
    return store.write_status(
        run_id,
        status="failed",
        kind=kind or failure_kind(exc),
        divergence=json_safe(exc.details) if isinstance(exc, Divergence) else None,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
        log_tail=log_tail(store.run_dir(run_id)),
        host=socket.gethostname(),
        pid=os.getpid(),
        finished=time.time(),
    )


@dataclass(frozen=True)
class StageOutcome:
    run_id: str
    status: str  # done | failed
    kind: str | None = None  # for a failure: one of records.FAILURE_KINDS
    error: str | None = None


def run_stage(
    stage: DenseSpec | RunSpec, store: Store, runtime: RuntimeSpec, progress: Progress | None = None
) -> StageOutcome:
    """Run one stage (resuming from its checkpoint when it has one); a failure is recorded, not raised.

    A cell whose dense stage has no result is ``blocked`` (with the dense stage's error when it failed).
    The caller holds the stage's lock (mtlprune.locks); this function does no locking.
    """
    run_id = stage.run_id
    if store.is_done(run_id):
        return StageOutcome(run_id, "done")
    try:
        if isinstance(stage, RunSpec):
            dense_id = stage.dense().run_id
            if not store.is_done(dense_id):
                record = store.status_record(dense_id)
                why = (record and record.error) or f"status {store.status(dense_id)}"
                raise StageBlocked(f"its dense stage {dense_id} has no result ({why})")
            run_cell(stage, store, runtime, progress)
        else:
            run_dense(stage, store, runtime, progress)
        return StageOutcome(run_id, "done")
    except Exception as exc:  # one broken stage must not stop the matrix
        kind = "blocked" if isinstance(exc, StageBlocked) else None
        record = record_failure(store, run_id, exc, kind)
        return StageOutcome(run_id, "failed", record.kind, record.error)


class StageBlocked(RuntimeError):
    """A cell cannot start: the dense stage it needs has no result."""
