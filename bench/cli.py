"""`mtlprune ...`: run, plan, status, report, methods/archs/datasets, data synth/verify/fingerprint,
import-checkpoint."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from mtlprune.execution.interrupts import exits_on_interrupt
from mtlprune.registry import ARCHS, DATASETS, METHODS, load_plugins
from mtlprune.spec import CONTROL_METHOD, ArchSpec, ConfigError, MatrixSpec, load_matrix
from mtlprune.store import DEFAULT_STORE

if TYPE_CHECKING:
    from mtlprune.plan.compute import ComputePlan, DataNeeds, ModelSize

EXECUTORS = ("local", "slurm", "submitit-local")  # mtlprune.execution.slurm.EXECUTORS, without importing it
console = Console(soft_wrap=False, width=160)


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def describe_params(schema: dict[str, Any]) -> str:
    """`name: type = default — description` for each property of a pydantic JSON schema."""
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or " | ".join(
            str(p.get("type", p.get("const", "?"))) for p in prop.get("anyOf", [])
        )
        if "enum" in prop:
            kind = " | ".join(repr(v) for v in prop["enum"])
        default = f" = {prop['default']!r}" if "default" in prop else ""
        desc = f" — {prop['description']}" if prop.get("description") else ""
        parts.append(f"{name}: {kind}{default}{desc}")
    return "\n".join(parts) or "(none)"


def cmd_list(kind: str) -> int:
    table = Table(title=f"registered {kind}", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters")
    if kind == "methods":
        for name, cls in METHODS.items():
            table.add_row(
                name,
                f"{first_line(cls)}\nstarts from: {cls.starts_from}",
                describe_params(cls.Params.model_json_schema()),
            )
    elif kind == "archs":
        arch_params = {k: v for k, v in ArchSpec.model_json_schema()["properties"].items() if k != "name"}
        for name, factory in ARCHS.items():
            table.add_row(name, first_line(factory), describe_params({"properties": arch_params}))
    else:
        for name, cls in DATASETS.items():
            tasks = ", ".join(f"{t} ({c} ch)" for t, c in cls.task_channels.items())
            table.add_row(name, first_line(cls), f"tasks: {tasks}\nlisting: {cls.listing_name}")
    console.print(table)
    return 0


def _load(args: argparse.Namespace) -> MatrixSpec:
    return load_matrix(args.config, args.overrides)


def _only(args: argparse.Namespace) -> Any:
    from mtlprune.spec.select import Selection

    return Selection.parse(args.only)


UNKNOWN_ID = "(unknown)"  # a stage whose run id depends on a data fingerprint that cannot be computed


def _unknown_data(matrix: MatrixSpec, unknown: dict[int, str]) -> list[str]:
    """Why the run ids of some datasets are unknown, and how to make them known."""
    return [
        f"run ids of datasets[{i}] ({matrix.datasets[i].dataset}) are unknown: they follow the content "
        f"fingerprint of its data, which cannot be computed now ({why}); make the data readable, or pin "
        f"datasets[{i}].fingerprint (mtlprune data fingerprint --dataset {matrix.datasets[i].dataset} "
        f"--root {matrix.datasets[i].root})"
        for i, why in unknown.items()
    ]


def cmd_plan(args: argparse.Namespace) -> int:
    from mtlprune.engine.requirements import data_needs, model_sizes, planned_stages
    from mtlprune.execution.device import device_warning
    from mtlprune.plan.compute import compute_plan, parse_step_time
    from mtlprune.plan.estimate import estimate_costs
    from mtlprune.plan.fingerprint import identity_known, resolve_data_lenient
    from mtlprune.plan.stages import plan
    from mtlprune.store import Store

    step_time = parse_step_time(args.step_time) if args.step_time is not None else None  # bad input: at once
    store = Store(args.store)
    store.require_usable(write=False)
    matrix, unknown = resolve_data_lenient(_load(args), store.root)
    only = _only(args)
    stages = plan(matrix, only)
    planned = {p.run_id: p for p in planned_stages(stages)}
    dense = [s.spec for s in stages if s.kind == "dense"]
    cells = [s.spec for s in stages if s.kind == "cell"]

    def shown(run_id: str, known: bool) -> tuple[str, str]:
        return (run_id, store.status(run_id)) if known else (UNKNOWN_ID, "unknown")

    table = Table(title=f"{matrix.name}: {len(dense)} dense stage(s), {len(cells)} cell(s)")
    columns = (
        "stage",
        "run_id",
        "dataset/tasks",
        "arch",
        "method",
        "target",
        "seed",
        "needs",
        "steps",
        "status",
    )
    for column in columns:
        table.add_column(column, justify="right" if column == "steps" else "left")
    for d in dense:
        arch = f"{d.arch.name} w{d.arch.width:g}/h{d.arch.head_width:g}"
        data = f"{d.data.dataset}:{','.join(d.data.tasks)}"
        run_id, status = shown(d.run_id, identity_known(d.data))
        steps = f"{planned[d.run_id].steps:,}"
        table.add_row("dense", run_id, data, arch, "—", "—", str(d.seed), "—", steps, status)
    for c in cells:
        arch = f"{c.arch.name} w{c.arch.width:g}/h{c.arch.head_width:g}"
        data = f"{c.data.dataset}:{','.join(c.data.tasks)}"
        run_id, status = shown(c.run_id, identity_known(c.data))
        row = ("cell", run_id, data, arch, c.method.label, f"{c.target_sparsity:g}", str(c.seed))
        needs = "+".join(shown(d.run_id, identity_known(c.data))[0] for d in c.needs())
        table.add_row(*row, needs, f"{planned[c.run_id].steps:,}", status)
    console.print(table)
    for line in _unknown_data(matrix, unknown):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    unknown_ids = [s.run_id for s in stages if not identity_known(s.spec.data)]  # counted as pending
    estimate = estimate_costs(store.root, stages, unknown=unknown_ids)
    pending = set(estimate.per_stage)
    needs, sizes = data_needs(matrix), model_sizes(matrix)  # of the whole matrix, also with --only
    costs = compute_plan(
        list(planned.values()),
        step_time=step_time,
        measured=estimate.per_stage,
        done=[s.run_id for s in stages if s.run_id not in pending],
        data=needs,
        models=sizes,
        loader_workers=matrix.runtime.num_workers,
        on_cpu=matrix.runtime.device == "cpu",
    )
    console.print("[bold]What the run needs[/bold]")
    for line in [*_data_lines(needs.values()), *_model_lines(sizes.values())]:
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(_compute_table(costs), markup=False, highlight=False)
    for line in _compute_lines(costs, matrix):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    wall = estimate.wall_line(matrix.runtime.workers)
    for line in [estimate.line, *([wall] if wall else []), *estimate.notes]:
        console.print(f"  {line}", markup=False, highlight=False)
    warning = device_warning(matrix.runtime)
    if warning:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _counts(counts: dict[str, int]) -> str:
    return " / ".join(f"{n:,} {split}" for split, n in counts.items())


def _data_lines(needs: Iterable[DataNeeds]) -> list[str]:
    """Per dataset: where it is, what its listing holds, and what the published data has."""
    lines = []
    for need in needs:
        head = f"data {need.dataset} ({need.source}): "
        if need.source == "synthetic":
            lines.append(f"{head}{need.root}: {_counts(need.found or {})} samples")
            continue
        expected = (
            f"expected {_counts(need.expected)} ({need.reference})"
            if need.expected
            else f"expected: {need.reference or 'no published counts'}"
        )
        if need.problem is not None:
            lines.append(f"{head}MISSING: {need.problem}; {expected}")
            continue
        lines.append(f"{head}{need.root}: found {_counts(need.found or {})}; {expected}")
        mismatches = need.mismatches()
        if mismatches:
            lines.append(f"  WARNING: the listing is not the published split ({'; '.join(mismatches)})")
    return lines


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _model_lines(sizes: Iterable[ModelSize]) -> list[str]:
    """Per model: all and prunable parameters, and the split over backbone and heads."""
    lines = []
    for size in sizes:
        lines.append(
            f"model {size.arch} width {size.width:g}/{size.head_width:g} ({', '.join(size.tasks)}): "
            f"{_millions(size.total)} parameters, {_millions(size.total_prunable)} prunable"
        )
        split = ", ".join(
            f"{component} {_millions(n)} ({_millions(size.prunable.get(component, 0))} prunable)"
            for component, n in size.parameters.items()
        )
        lines.append(f"  {split}; heads are {100 * size.heads_share:.1f}% of the parameters")
    return lines


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def _compute_table(costs: ComputePlan) -> Table:
    """Stages grouped by what they cost (kind, setting, method, steps): steps, time, Slurm request."""
    from mtlprune.plan.compute import slurm_time
    from mtlprune.plan.estimate import format_duration

    def setting_of(spec: Any) -> str:
        return f"{spec.data.dataset} {spec.arch.name} w{spec.arch.width:g}/h{spec.arch.head_width:g}"

    settings = {setting_of(c.planned.stage.spec) for c in costs.stages}
    source = costs.step_time.describe() if costs.step_time is not None else "the times of finished stages"
    title = f"compute per stage{f' of {next(iter(settings))}' if len(settings) == 1 else ''}, from {source}"
    table = Table(title=title)
    columns = ["stage", "targets", "stages", "pending", "steps each", "steps_total each", "time each",
               "--time", "device mem", "--mem"]  # fmt: skip
    if len(settings) > 1:
        columns.insert(1, "setting")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "setting", "targets") else "right")
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for cost in costs.stages:
        p = cost.planned
        spec = p.stage.spec
        label = spec.method.label if p.kind == "cell" else "dense"
        key = (p.kind, setting_of(spec), label, p.steps, p.steps_total, p.step_kind)
        groups.setdefault(key, []).append(cost)
    for (_kind, setting, label, steps, steps_total, _), members in groups.items():
        targets = sorted({m.planned.stage.spec.target_sparsity for m in members if m.planned.kind == "cell"})
        waiting = [m for m in members if not m.done]
        seconds = [m.seconds for m in waiting]
        if not waiting:
            time_text = limit = "—"
        elif any(t is None for t in seconds):
            time_text = limit = "?"
        else:
            time_text = format_duration(max(t for t in seconds if t is not None))
            limit = slurm_time(max(m.slurm_minutes for m in waiting))
        memories = [m.memory for m in members if m.memory is not None]
        device = mem = "?"
        if memories:
            known = all(m.activations_known for m in memories)
            device = _size(max(m.device_bytes for m in memories)) + ("" if known else " + activations")
            mem = f"{max(m.slurm_mem_gib for m in memories)}G"
        row = [label, ", ".join(f"{t:g}" for t in targets) or "—", str(len(members)), str(len(waiting)),
               f"{steps:,}", f"{steps_total:,}", time_text, limit, device, mem]  # fmt: skip
        if len(settings) > 1:
            row.insert(1, setting)
        table.add_row(*row)
    return table


def _compute_lines(costs: ComputePlan, matrix: MatrixSpec) -> list[str]:
    """The totals: optimizer steps, GPU time and hours of what is pending, and the Slurm request."""
    from mtlprune.plan.compute import gpu_hours, slurm_time
    from mtlprune.plan.estimate import format_duration

    n_dense = sum(1 for c in costs.stages if c.planned.kind == "dense")
    n_cells = len(costs.stages) - n_dense
    lines = [
        f"steps: {costs.steps():,} optimizer steps in all: {costs.steps('dense'):,} in {n_dense} dense "
        f"stage(s), {costs.steps('cell'):,} in {n_cells} cell(s) (a cell's steps_total also counts its dense "
        "stage's when it starts from the dense model, and those of the stages its method asks for)"
    ]
    pending = costs.pending
    total = costs.pending_seconds
    unit = "CPU-hours" if matrix.runtime.device == "cpu" else "GPU-hours"
    if not pending:
        lines.append("time: nothing pending")
    elif total is None:
        lines.append(
            "time: unknown; pass --step-time SECONDS, or --step-time FILE.json from "
            "python -m tools.gpu_check --json FILE (docs/slurm.md)"
        )
    else:
        workers = matrix.runtime.workers
        wall = (
            f"; with {workers} workers ≈ {format_duration(total / workers)} of wall time"
            if workers > 1
            else ""
        )
        lines.append(
            f"time: {len(pending)} pending stage(s) ≈ {format_duration(total)} = {gpu_hours(total):.1f} "
            f"{unit}{wall}"
        )
    requests = []
    for kind, name in (("dense", "dense stages"), ("cell", "cells")):
        minutes, mem = costs.slurm_minutes(kind), costs.slurm_mem_gib(kind)
        if minutes is None and mem is None:
            continue
        parts = [f"--time {slurm_time(minutes)}" if minutes is not None else "--time ?"]
        if mem is not None:
            parts.append(f"--mem {mem}G")
        requests.append(f"{name} {' '.join(parts)}")
    if requests:
        lines.append(
            f"Slurm per task: {'; '.join(requests)} (the longest pending stage's time × 1.5 rounded up to 15 "
            "min; host memory estimate × 1.5; docs/slurm.md)"
        )
    limit = matrix.runtime.slurm.timeout_min
    over = costs.over_limit(limit)
    if over:
        lines.append(
            f"  {len(over)} pending stage(s) need more than runtime.slurm.time {matrix.runtime.slurm.time}: "
            f"each would be requeued at the limit and resume from its checkpoint (up to max_requeue "
            f"{matrix.runtime.slurm.max_requeue} times); pass --time to cover them"
        )
    lines.extend(costs.notes)
    return lines


def _checkpoint_info(run_dir: Path) -> dict[str, Any] | None:
    """Where a stage's in-stage checkpoint is (bench/engine/checkpoint.py), or None; torch-free."""
    from mtlprune.engine.checkpoint import CHECKPOINT_INFO
    from mtlprune.store import read_json

    path = run_dir / CHECKPOINT_INFO
    return read_json(path) if path.is_file() else None


def cmd_status(args: argparse.Namespace) -> int:
    from mtlprune.execution.claim import lock_summary
    from mtlprune.plan.fingerprint import DataFingerprintError, resolve_data_lenient
    from mtlprune.plan.stages import plan
    from mtlprune.store import Store

    store = Store(args.store)
    store.require_usable(write=False)
    matrix, unknown = resolve_data_lenient(_load(args), store.root)
    if unknown:
        raise DataFingerprintError("; ".join(_unknown_data(matrix, unknown)))
    now = time.time()
    counts: dict[str, int] = {}
    failures: list[str] = []
    damaged: list[str] = []
    holders: list[str] = []
    table = Table(title=f"{matrix.name} in {store.root}")
    for column in ("stage", "run_id", "what", "status"):
        table.add_column(column)
    stages = plan(matrix, _only(args))
    for stage in stages:
        run_id = stage.run_id
        status = store.status(run_id)
        shown = status
        if status == "damaged":
            damaged += [f"  {run_id} {stage.label}: {p.line()}" for p in store.inspect(run_id).problems]
        elif status == "failed":
            record = store.status_record(run_id)
            kind = record.kind or "error"
            shown = f"failed ({kind})"
            failures.append(f"  {run_id} {stage.label}: [{kind}] {record.error or '?'}")
            failures += [f"      log: {_clip(line)}" for line in record.log_tail[-2:]]
        elif status != "done":
            held = lock_summary(store.run_dir(run_id), now)
            if held is not None:
                info, stale = held
                status = shown = "running" if stale is None else "interrupted"
                flag = f"  STALE: {stale}; the next run takes it over" if stale else ""
                holders.append(
                    f"  {run_id} {stage.label}: held by {info.describe(now)}, "
                    f"heartbeat {info.age(now):.0f} s ago{flag}"
                )
            elif status == "running":  # killed without a trace of its lock: resumes on the next run
                status = shown = "interrupted"
            saved = _checkpoint_info(store.run_dir(run_id))
            if saved is not None:
                age = now - float(saved["saved"])
                holders.append(
                    f"  {run_id} {stage.label}: checkpoint at step {saved['step']} of training call "
                    f"{saved['call']}, saved {age:.0f} s ago (a run resumes from there)"
                )
        counts[status] = counts.get(status, 0) + 1
        table.add_row(stage.kind, run_id, stage.label, shown)
    console.print(table)
    warnings = _convergence_warnings(stages, store)
    sections = (("damaged", damaged), ("failed", failures), ("in progress", holders), ("warning", warnings))
    for title, lines in sections:
        if lines:
            console.print(f"[bold]{title}:[/bold]")
            for line in lines:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def _convergence_warnings(stages: list[Any], store: Any) -> list[str]:
    """One line per finished dense stage that has not converged (mtlprune.engine.convergence): its training
    loss was still falling at the end, or its control row gained more than the tolerance from the finetune
    budget."""
    from mtlprune.analysis.delta import delta_t
    from mtlprune.analysis.dense_results import CONTROL_TOLERANCE, control_converged

    lines = []
    controls = {
        s.spec.dense().run_id: s for s in stages if s.kind == "cell" and s.spec.method.name == CONTROL_METHOD
    }
    for stage in stages:
        if stage.kind != "dense" or not store.is_done(stage.run_id):
            continue
        dense = store.result(stage.run_id)
        convergence = dense.convergence or {}
        if convergence.get("converged") is False:
            lines.append(
                f"  {stage.run_id} {stage.label}: NOT CONVERGED: its loss fell by "
                f"{100 * convergence['rel_drop']:.1f}% within the last 20% of training (tolerance "
                f"{100 * convergence['tolerance']:g}%); train.steps is too small for a comparison to mean "
                "much"
            )
        control = controls.get(stage.run_id)
        if control is None or not store.is_done(control.run_id):
            continue
        data = stage.spec.data
        try:
            gain = delta_t(
                store.result(control.run_id).metrics, dense.metrics, data.tasks, dataset=data.dataset
            )
        except (KeyError, ValueError):  # a dense metric of 0: no ΔT, no verdict
            continue
        if not control_converged(gain["delta_t"]):
            lines.append(
                f"  {stage.run_id} {stage.label}: NOT CONVERGED: the control row ({CONTROL_METHOD}) moves ΔT "
                f"by {gain['delta_t']:+.1f} from the finetune budget alone (tolerance "
                f"±{CONTROL_TOLERANCE:g}); compare methods against the control (delta_t_control), or train "
                "the dense stage longer"
            )
    return lines


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


SLURM_FLAGS = {  # command-line flag -> SlurmSpec field it overrides
    "partition": "partition",
    "time": "time",
    "gpus": "gpus_per_task",
    "cpus": "cpus_per_task",
    "mem": "mem",
    "max_parallel": "max_parallel",
}


def _slurm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        field: getattr(args, flag) for flag, field in SLURM_FLAGS.items() if getattr(args, flag) is not None
    }


def _slurm_spec(matrix: MatrixSpec, overrides: dict[str, Any]) -> Any:
    """The config's runtime.slurm with the command-line flags applied (validated like the config)."""
    from pydantic import ValidationError

    from mtlprune.spec.models import SlurmSpec

    try:
        return SlurmSpec.model_validate({**matrix.runtime.slurm.model_dump(), **overrides})
    except ValidationError as exc:
        flags = {field: f"--{flag.replace('_', '-')}" for flag, field in SLURM_FLAGS.items()}
        problems = [
            f"{flags.get(str(e['loc'][0]), 'runtime.slurm.' + str(e['loc'][0]))}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise ValueError("bad Slurm resources: " + "; ".join(problems)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from mtlprune.analysis.report import write_run_report
    from mtlprune.execution.device import check_device
    from mtlprune.execution.matrix import run_matrix
    from mtlprune.plan.code_changes import check_changed_code
    from mtlprune.plan.fingerprint import resolve_data
    from mtlprune.plan.stages import plan
    from mtlprune.store import Store
    from mtlprune.store.manifest import write_manifest

    loaded = _load(args)
    check_device(loaded.runtime, args.executor)  # before any work: a stage here needs its device here
    store = Store(args.store)
    store.require_usable(write=True)  # a file, or read-only: said before any work
    matrix = resolve_data(loaded, store.root)  # before any run id: disk data ids follow content
    plugins = [*args.plugin, *args.sub_plugin]
    overrides = _slurm_overrides(args)
    only = _only(args)
    for cell in check_changed_code(plan(matrix, only), store, args.recompute_changed):
        console.print(f"recomputing {cell.run_id} ({cell.method}): its plugin code changed", markup=False)
    if args.executor == "local":
        if overrides:
            named = ", ".join(f"--{f.replace('_', '-')}" for f in SLURM_FLAGS if getattr(args, f) is not None)
            raise ValueError(f"{named}: Slurm resources apply to --executor slurm or submitit-local only")
        write_manifest(matrix, store, args.overrides)  # what `mtlprune report CONFIG` reads, torch-free
        outcome = run_matrix(
            matrix, store, show_progress=not args.no_progress, workers=args.workers,
            retry_failed=args.retry_failed, plugins=plugins, only=only,
        )  # fmt: skip
    else:
        from mtlprune.execution.slurm import submit_matrix

        if args.workers not in (None, 1):
            raise ValueError(
                "--workers is for --executor local; Slurm runs one task per stage (--max-parallel)"
            )

        def echo(text: str) -> None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)

        slurm = _slurm_spec(matrix, overrides)  # validated before anything is written
        write_manifest(matrix, store, args.overrides)
        submission = submit_matrix(
            matrix, store, executor=args.executor, slurm=slurm,
            retry_failed=args.retry_failed, plugins=plugins, echo=echo, only=only,
        )  # fmt: skip
        if submission.outcome is None:  # queued on Slurm: results come later
            return 0
        outcome = submission.outcome
    write_run_report(matrix, store, console)
    for line in _convergence_warnings(plan(matrix, only), store):
        console.print(f"[yellow]warning:[/yellow]{line}", highlight=False, soft_wrap=True)
    if outcome.failed:
        console.print(
            f"[red]{len(outcome.failed)} stage(s) failed[/red]; see `mtlprune status {args.config}"
            + ("" if Path(args.store) == DEFAULT_STORE else f" --store {args.store}")
            + "`; `--retry-failed` runs them again"
        )
        return 1
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    p.add_argument(
        "--workers", type=positive_int, default=None,
        help="local worker processes (default: the config's runtime.workers, 1 unless set); CPU threads are "
        "split between them and each gets its own GPU where several are visible",
    )  # fmt: skip
    p.add_argument(
        "--executor", choices=EXECUTORS, default="local",
        help="local: this machine (default); slurm: job arrays through submitit (docs/slurm.md); "
        "submitit-local: the Slurm code path as local submitit jobs (CI)",
    )  # fmt: skip
    p.add_argument("--retry-failed", action="store_true", help="run stages that failed before once more")
    p.add_argument(
        "--recompute-changed", action="store_true",
        help="compute again the finished cells of plugin methods whose code changed since they ran (the "
        "old result is kept as result.superseded-<sha>.json); without it such cells stop the run",
    )  # fmt: skip
    group = p.add_argument_group("Slurm resources (override the config's runtime.slurm)")
    group.add_argument("--partition", help="sbatch --partition")
    group.add_argument("--time", help="time limit per stage task: minutes, H:MM:SS or D-H[:MM[:SS]]")
    group.add_argument("--gpus", type=int, help="GPUs per task")
    group.add_argument("--cpus", type=int, help="CPU cores per task")
    group.add_argument("--mem", help="memory per task, e.g. 32G")
    group.add_argument(
        "--max-parallel", type=int, help="array tasks running at once (slurm_array_parallelism)"
    )


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 120x160), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def cmd_data_verify(args: argparse.Namespace) -> int:
    from mtlprune.datasets.verify import verify

    report = verify(args.dataset, args.root)
    counts = ", ".join(f"{n} {split}" for split, n in report.counts.items()) or "no samples"
    console.print(f"{args.dataset} at {report.root}: {counts}")
    sizes = ", ".join(f"{h}×{w}: {n}" for (h, w), n in sorted(report.sizes.items()))
    if sizes:
        console.print(f"image sizes: {sizes}")
    if report.class_histogram:
        total = sum(report.class_histogram.values())
        table = Table(title="segmentation label histogram (pixels)")
        for column in ("label", "pixels", "share"):
            table.add_column(column, justify="right")
        for label, n in sorted(report.class_histogram.items()):
            table.add_row("ignore (255)" if label == 255 else str(label), str(n), f"{100 * n / total:.2f}%")
        console.print(table)
    if report.ok:
        console.print("[green]no problems found[/green]")
        return 0
    console.print(f"[red]{len(report.problems)} problem(s):[/red]")
    for problem in report.problems:  # one line each, however long: a path is never broken
        console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
    return 1


def cmd_data_fingerprint(args: argparse.Namespace) -> int:
    """The digest alone on stdout (for scripts and for pinning it in a config); the summary on stderr."""
    from mtlprune.plan.fingerprint import data_fingerprint

    fingerprint = data_fingerprint(args.dataset, args.root, args.store)
    print(fingerprint.digest)
    print(f"{args.dataset} at {fingerprint.root}: {fingerprint.summary()}", file=sys.stderr)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    cls = DATASETS.get(args.format)
    n_test = max(1, round(args.n * args.test_fraction))
    n_train = args.n - n_test
    if n_train < 1:
        raise ValueError(f"--n {args.n} leaves no training frame with --test-fraction {args.test_fraction}")
    height, width = args.size
    root = cls.synthesize(
        Path(args.out), n_train=n_train, n_test=n_test, height=height, width=width, seed=args.seed
    )
    console.print(f"wrote {n_train} train + {n_test} test {args.format} frames ({height}×{width}) to {root}")
    return 0


def _plugin_option(parser: argparse.ArgumentParser) -> None:
    """``--plugin MODULE`` after the subcommand too (``mtlprune run x.yaml --plugin my.method``)."""
    parser.add_argument(
        "--plugin",
        dest="sub_plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a plugin (a module name, or a .py file path)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Figures, tables and one HTML page from stored results; never imports torch or the plugins."""
    from mtlprune.analysis.report import build_report

    outcome = build_report(args.source, store=args.store, out=args.out, style=args.style, only=args.only)
    counts = ", ".join(f"{n} {s}" for s, n in outcome.counts.items())
    console.print(f"cells: {counts}", markup=False, highlight=False)
    for line in outcome.damaged:
        console.print(f"  damaged: {line}", markup=False, highlight=False, soft_wrap=True)
    for note in outcome.notes:
        console.print(f"  left out: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"report: {outcome.html} ({len(outcome.figures)} figure files, {len(outcome.tables)} table files)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_store_check(args: argparse.Namespace) -> int:
    """Every record and file of a store, each problem with its path and what `run` does; exit 1 on any."""
    from mtlprune.store.integrity import check_store

    root = Path(args.store)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such store folder")
    problems = check_store(root, deep=not args.shallow)
    for problem in problems:
        console.print(problem.line(), markup=False, highlight=False, soft_wrap=True)
    runs = root / "runs"
    stages = sum(1 for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else 0
    if not problems:
        console.print(f"store {root}: {stages} stage folders, no problem", markup=False, highlight=False)
        return 0
    actions = Counter(p.action for p in problems)
    summary = ", ".join(f"{n} {ACTION_WORDS[a]}" for a, n in actions.items())
    console.print(
        f"store {root}: {len(problems)} problem(s) in {stages} stage folders ({summary})",
        markup=False,
        highlight=False,
    )
    return 1


ACTION_WORDS = {"recompute": "to recompute", "keep": "kept", "person": "need a person"}


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """Import a reference checkpoint, evaluate it under every protocol, store it; print both metric sets."""
    from mtlprune.engine.imports import import_checkpoint
    from mtlprune.spec import DataSpec
    from mtlprune.store import Store

    tasks = DATASETS.get(args.dataset).tasks if args.tasks is None else args.tasks.split(",")
    source = {"source": "synthetic"} if args.synthetic else {"source": "disk", "root": args.root}
    data = DataSpec(dataset=args.dataset, tasks=tuple(t.strip() for t in tasks), **source)
    arch = ArchSpec(name=args.arch, width=args.width, head_width=args.head_width)
    store = Store(args.store)
    store.require_usable(write=True)
    outcome = import_checkpoint(args.checkpoint, args.format, arch, data, store, device=args.device)
    result = outcome.result
    protocols = list(result.protocol_metrics)
    table = Table(title=f"{args.format} checkpoint {result.source_name} as {result.arch} on {result.dataset}")
    table.add_column("metric")
    for protocol in protocols:
        table.add_column(protocol, justify="right")
    names = sorted({name for values in result.protocol_metrics.values() for name in values})
    for name in names:
        cells = [result.protocol_metrics[p].get(name) for p in protocols]
        table.add_row(name, *("—" if v is None else f"{v:.4f}" for v in cells))
    console.print(table)
    mapping = result.key_mapping
    facts = [f"{mapping.get('mapped', 0)} tensors mapped"]
    shares = [("overall", result.sparsity.get("achieved_sparsity"))] + [
        (key.removeprefix("sparsity."), value)
        for key, value in result.sparsity.items()
        if key.startswith(("sparsity.backbone", "sparsity.head."))
    ]
    shown = ", ".join(f"{name} {100 * v:.2f}%" for name, v in shares if isinstance(v, int | float))
    if shown:
        facts.append(f"sparsity: {shown}")
    if mapping.get("defaulted"):
        facts.append(f"{len(mapping['defaulted'])} num_batches_tracked defaulted to 0")
    console.print("; ".join(facts), markup=False, highlight=False)
    verb = "already imported" if outcome.existed else "written"
    console.print(
        f"{verb}: {outcome.run_dir} (run {outcome.run_id})", markup=False, highlight=False, soft_wrap=True
    )
    return 0


def _import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import-checkpoint",
        help="import a checkpoint trained by the AdapMTL, DiSparse or AdaShare code, evaluate it under both "
        "protocols and write it into the store (docs/datasets.md)",
    )
    _plugin_option(p)
    p.add_argument("checkpoint", metavar="PATH", help="the checkpoint file their code saved")
    p.add_argument("--format", required=True, choices=("adapmtl", "disparse", "adashare"))
    p.add_argument("--arch", required=True, help="deeplab_resnet34 or mobilenetv2 (AdapMTL only)")
    p.add_argument("--dataset", required=True, help="nyuv2 or taskonomy: the data to evaluate on")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks in the checkpoint's head order (DiSparse/AdaShare: their config's TASKS "
        "order); default: every task of the dataset",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", help="dataset root on disk (its test split is evaluated)")
    where.add_argument("--synthetic", action="store_true", help="evaluate on the synthetic data instead")
    p.add_argument("--store", default=str(DEFAULT_STORE), help="result store root (default: results)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--width", type=float, default=1.0, help="backbone width of the checkpoint (default 1.0)")
    p.add_argument("--head-width", type=float, default=1.0, help="ASPP width of the checkpoint (default 1.0)")


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="figures, tables and an HTML page from stored results (no torch)")
    p.add_argument("source", metavar="CONFIG_OR_STORE", help="a matrix YAML (its manifest) or a store folder")
    p.add_argument("--store", default=None, help="result store root for a CONFIG (default: results)")
    p.add_argument("--out", default=None, help="output folder (default: <store>/<matrix>/report)")
    p.add_argument(
        "--style", choices=("paper", "screen"), default="paper", help="figure sizes (default paper)"
    )
    _only_option(p)


def _only_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="work on the selected stages only: short keys (method, sparsity, seed, arch, dataset, tasks, "
        "width, protocol) or spec paths (finetune.lr); same key = any of, different keys = all of",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlprune", description=__doc__)
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a plugin (a module name, or a .py file path)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run every pending stage"),
        ("plan", "show stages, run nothing"),
        ("status", "done/pending/failed per stage"),
    ):
        p = sub.add_parser(name, help=help_text)
        _plugin_option(p)
        p.add_argument("config")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY.PATH=VALUE",
            help="override config values before validation, e.g. train.steps=200 datasets[0].root=/data",
        )
        p.add_argument("--store", default=str(DEFAULT_STORE), help="result store root (default: results)")
        _only_option(p)
        if name == "run":
            _run_options(p)
        if name == "plan":
            p.add_argument(
                "--step-time",
                metavar="SECONDS|FILE.json",
                default=None,
                help="seconds per optimizer step for every stage, or the JSON that `python -m "
                "tools.gpu_check --json FILE` writes (per step kind); gives per-stage time, GPU-hours and a "
                "Slurm --time and --mem (docs/slurm.md). Without it: the times of finished stages",
            )
    for name in ("methods", "archs", "datasets"):
        _plugin_option(sub.add_parser(name, help=f"list registered {name}"))
    _report_parser(sub)
    _import_parser(sub)
    store = sub.add_parser("store", help="result store tools").add_subparsers(
        dest="store_command", required=True
    )
    check_store = store.add_parser(
        "check",
        help="validate every record and file of a store; list each problem with its path and what `run` "
        "does about it (recompute, keep, needs a person); exit 1 on any",
    )
    check_store.add_argument(
        "--store", default=str(DEFAULT_STORE), help="result store root (default: results)"
    )
    check_store.add_argument(
        "--shallow", action="store_true", help="compare sizes and mtimes, hash only moved files (faster)"
    )
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="render synthetic frames in a dataset's on-disk format")
    synth.add_argument("--format", default="nyuv2", help="dataset format (default nyuv2)")
    synth.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    synth.add_argument("--n", type=int, default=100, help="total frames (default 100)")
    synth.add_argument("--size", type=parse_size, default=(120, 160), help="HxW (default 120x160)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.2, help="share of frames in the test split")
    check = data.add_parser("verify", help="check every file of a dataset root against its format")
    check.add_argument("--dataset", required=True, help="registered dataset name (nyuv2, ...)")
    check.add_argument("--root", required=True, help="dataset root directory")
    fingerprint = data.add_parser(
        "fingerprint", help="print the content fingerprint that identifies a dataset root in run ids"
    )
    fingerprint.add_argument("--dataset", required=True, help="registered dataset name (nyuv2, ...)")
    fingerprint.add_argument("--root", required=True, help="dataset root directory")
    fingerprint.add_argument(
        "--store", default=str(DEFAULT_STORE), help="result store holding the digest cache (default: results)"
    )
    return parser


def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """A warning as the command line shows it: one line, without the source line Python adds."""
    return f"warning: {message}\n"


@exits_on_interrupt  # Ctrl-C, SIGTERM: one line per interrupted stage (where it resumes), exit 130 / 143
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        return _dispatch(args)
    finally:
        warnings.formatwarning = shown


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; a bad input is one line on stderr and exit 2."""
    try:
        if args.command == "report":  # from stored results alone: the plugins import torch
            return cmd_report(args)
        if args.command == "store":
            return cmd_store_check(args)
        load_plugins([*args.plugin, *getattr(args, "sub_plugin", [])])
        if args.command in ("methods", "archs", "datasets"):
            return cmd_list(args.command)
        if args.command == "data":
            commands = {
                "verify": cmd_data_verify,
                "fingerprint": cmd_data_fingerprint,
                "synth": cmd_data_synth,
            }
            return commands[args.data_command](args)
        if args.command == "import-checkpoint":
            return cmd_import_checkpoint(args)
        return {"run": cmd_run, "plan": cmd_plan, "status": cmd_status}[args.command](args)
    except (ConfigError, ImportError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a store or dataset the system refuses (permissions, not a directory, disk full)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
