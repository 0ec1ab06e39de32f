"""`python -m bench ...`: run, plan, status, methods, archs, datasets, data synth."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.registry import ARCHS, DATASETS, METHODS, load_plugins
from bench.spec import ArchSpec, ConfigError, MatrixSpec, load_matrix

DEFAULT_STORE = Path("results")
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


def _load(path: str) -> MatrixSpec:
    return load_matrix(path)


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.runner import plan, requirements
    from bench.store import Store

    matrix = _load(args.config)
    store = Store(args.store)
    the_plan = plan(matrix)
    table = Table(title=f"{matrix.name}: {len(the_plan.dense)} dense stage(s), {len(the_plan.cells)} cell(s)")
    for column in ("stage", "run_id", "dataset/tasks", "arch", "method", "target", "seed", "needs", "status"):
        table.add_column(column)
    for d in the_plan.dense:
        arch = f"{d.arch.name} w{d.arch.width:g}/h{d.arch.head_width:g}"
        data = f"{d.data.dataset}:{','.join(d.data.tasks)}"
        table.add_row("dense", d.run_id, data, arch, "—", "—", str(d.seed), "—", store.status(d.run_id))
    for c in the_plan.cells:
        arch = f"{c.arch.name} w{c.arch.width:g}/h{c.arch.head_width:g}"
        data = f"{c.data.dataset}:{','.join(c.data.tasks)}"
        row = ("cell", c.run_id, data, arch, c.method.label, f"{c.target_sparsity:g}", str(c.seed))
        table.add_row(*row, c.dense().run_id, store.status(c.run_id))
    console.print(table)
    console.print("[bold]What the run needs[/bold]")
    for line in requirements(matrix):
        console.print(f"  {line}", markup=False, highlight=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.runner import plan
    from bench.store import Store

    matrix = _load(args.config)
    store = Store(args.store)
    the_plan = plan(matrix)
    counts: dict[str, int] = {}
    table = Table(title=f"{matrix.name} in {store.root}")
    for column in ("stage", "run_id", "what", "status", "error"):
        table.add_column(column)
    stages = [("dense", d, f"{d.data.dataset} {d.arch.name} seed {d.seed}") for d in the_plan.dense]
    stages += [("cell", c, f"{c.method.label} @ {c.target_sparsity:g} seed {c.seed}") for c in the_plan.cells]
    for kind, stage, what in stages:
        status = store.status(stage.run_id)
        counts[status] = counts.get(status, 0) + 1
        error = store.status_record(stage.run_id).get("error", "") if status == "failed" else ""
        table.add_row(kind, stage.run_id, what, status, error)
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.report import write_run_report
    from bench.runner import run_matrix
    from bench.store import Store

    matrix = _load(args.config)
    store = Store(args.store)
    outcome = run_matrix(matrix, store, show_progress=not args.no_progress)
    write_run_report(matrix, store, console)
    if outcome.failed:
        console.print(
            f"[red]{len(outcome.failed)} stage(s) failed[/red]; see `python -m bench status {args.config}`"
        )
        return 1
    return 0


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 120x160), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def cmd_data_verify(args: argparse.Namespace) -> int:
    from datasets.verify import verify

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
    for problem in report.problems:
        console.print(f"  {problem}", markup=False, highlight=False)
    return 1


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
    """``--plugin MODULE`` after the subcommand too (``bench run x.yaml --plugin my.method``)."""
    parser.add_argument(
        "--plugin", dest="sub_plugin", action="append", default=[], metavar="MODULE", help="import a plugin"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE", help="import a plugin module"
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
        p.add_argument("--store", default=str(DEFAULT_STORE), help="result store root (default: results)")
        if name == "run":
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name in ("methods", "archs", "datasets"):
        _plugin_option(sub.add_parser(name, help=f"list registered {name}"))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_plugins([*args.plugin, *getattr(args, "sub_plugin", [])])
        if args.command in ("methods", "archs", "datasets"):
            return cmd_list(args.command)
        if args.command == "data":
            return cmd_data_verify(args) if args.data_command == "verify" else cmd_data_synth(args)
        return {"run": cmd_run, "plan": cmd_plan, "status": cmd_status}[args.command](args)
    except (ConfigError, ImportError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
