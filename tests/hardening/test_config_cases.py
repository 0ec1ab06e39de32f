"""The config catalogue: every hostile matrix config or override gets one clear error before work starts.

One row per case (tests/hardening/README.md). A row changes the tiny base config either with ``key=value``
overrides (tested twice: written into the YAML file, and given on the command line, which must behave the
same) or by editing the YAML text (duplicate keys, encodings). ``expect`` lists fragments the error must
hold: the key path and what was expected; an empty ``expect`` is a legitimate config that must still load.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from mtlprune.cli import main
from mtlprune.execution.device import check_device
from mtlprune.spec import ConfigError, load_matrix, parse_matrix
from mtlprune.spec.models import MAX_SEED, RuntimeSpec
from mtlprune.spec.overrides import apply_overrides
from tests.helpers import tiny_matrix_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = tiny_matrix_dict()  # train.steps 6, finetune.steps 2; methods random, magnitude
BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


def _insert_after(anchor: str, lines: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert anchor in text, anchor
        return text.replace(anchor, anchor + lines, 1)

    return edit


def _line_of(text: str, fragment: str, nth: int = 1) -> int:
    """1-based line of the nth line of ``text`` starting with ``fragment`` (after indentation)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(fragment)]
    return hits[nth - 1]


@dataclass(frozen=True)
class Case:
    id: str
    overrides: tuple[str, ...] = ()
    edit: Callable[[str], str | bytes] | None = None
    expect: tuple[str, ...] = ()  # () = accepted
    cli: bool = False  # also through `mtlprune plan`: exit 2, `error: ...` on stderr
    names: str | None = None  # what the error's first line names instead of the config file


DUP_TOP = _insert_after("name: tiny\n", "train:\n  steps: 9\n")
DUP_NESTED = _insert_after("  steps: 6\n", "  steps: 7\n")
DUP_IN_LIST = _insert_after("    seed: 0\n", "    seed: 1\n")
DUP_FLOW = _insert_after("name: tiny\n", "sparsities: [0.5]\n")

CASES = [
    # 1. infinities (and NaN): every float of the spec models and of a method's Params
    Case(
        "lr-inf",
        ("train.lr=.inf",),
        expect=("train.lr: Input should be a finite number", "(got inf)"),
        cli=True,
    ),
    Case("finetune-lr-inf", ("finetune.lr=.inf",), expect=("finetune.lr: Input should be a finite number",)),
    Case("lr-nan", ("train.lr=.nan",), expect=("train.lr: Input should be a finite number", "(got nan)")),
    Case(
        "weight-decay-inf",
        ("train.weight_decay=.inf",),
        expect=("train.weight_decay: Input should be a finite",),
    ),
    Case(
        "betas-inf", ("train.betas=[0.5, .inf]",), expect=("train.betas[1]: Input should be a finite number",)
    ),
    Case(
        "task-weight-inf",
        ("train.task_weights={normal: .inf}",),
        expect=("train.task_weights.normal: Input should be a finite number",),
    ),
    Case(
        "arch-width-inf",
        ("archs[0].width=.inf",),
        expect=("archs[0].width: Input should be a finite number",),
    ),
    Case(
        "method-param-inf",
        ("methods=[{name: adapmtl, params: {weight_decay: .inf}}]",),
        expect=(
            "methods[0]: method 'adapmtl': params.weight_decay: Input should be a finite number",
            "(got inf)",
        ),
        cli=True,
    ),
    Case(
        "method-param-nan",
        ("methods=[{name: lth, params: {rate: .nan}}]",),
        expect=("methods[0]: method 'lth': params.rate: Input should be a finite number",),
    ),
    # 2. seeds: integers from 0 to 2^32 - 1 (the engine's seed arithmetic stays within torch's 64 bits)
    Case(
        "seed-2^70",
        (f"seeds=[{2**70}]",),
        expect=(f"seeds[0]: a seed is an integer from 0 to {MAX_SEED}", f"(got {2**70})"),
        cli=True,
    ),
    Case(
        "seed-2^63",
        (f"seeds=[0, {2**63}]",),
        expect=(f"seeds[1]: a seed is an integer from 0 to {MAX_SEED}",),
    ),
    Case(
        "seed-2^63-1",
        (f"seeds=[{2**63 - 1}]",),
        expect=("seeds[0]: a seed is an integer from 0 to 4294967295",),
    ),
    Case("seed-2^32", (f"seeds=[{2**32}]",), expect=("seeds[0]: a seed is an integer from 0 to 4294967295",)),
    Case("seed-negative", ("seeds=[-1]",), expect=("seeds[0]: Input should be greater than or equal to 0",)),
    Case(
        "split-seed-2^70",
        (f"datasets[0].split_seed={2**70}",),
        expect=("datasets[0].split_seed: a seed is an integer from 0 to 4294967295",),
    ),
    Case(
        "synthetic-seed-2^63",
        (f"datasets[0].synthetic.seed={2**63}",),
        expect=("datasets[0].synthetic.seed: a seed is an integer from 0 to 4294967295",),
    ),
    Case("seed-bool", ("seeds=[0, true]",), expect=("seeds: expected an integer at [1], got a boolean",)),
    # 3. booleans where a number is expected (pydantic would read true as 1)
    Case(
        "steps-true",
        ("train.steps=true",),
        expect=("train.steps: expected an integer, got a boolean",),
        cli=True,
    ),
    Case(
        "batch-size-false",
        ("finetune.batch_size=false",),
        expect=("finetune.batch_size: expected an integer",),
    ),
    Case("lr-true", ("train.lr=true",), expect=("train.lr: expected a number, got a boolean",)),
    Case(
        "lr-step-true", ("train.lr_step=true",), expect=("train.lr_step: expected an integer, got a boolean",)
    ),
    Case(
        "crop-bool",
        ("datasets[0].crop=[32, true]",),
        expect=("datasets[0].crop: expected an integer at [1]",),
    ),
    Case(
        "sparsity-bool",
        ("sparsities=[0.5, true]",),
        expect=("sparsities: expected a number at [1], got a bool",),
    ),
    Case(
        "task-weight-bool",
        ("train.task_weights={normal: true}",),
        expect=("train.task_weights: expected a number at ['normal'], got a boolean",),
    ),
    Case(
        "workers-true",
        ("runtime.workers=true",),
        expect=("runtime.workers: expected an integer, got a boolean",),
    ),
    Case(
        "slurm-gpus-true",
        ("runtime.slurm.gpus_per_task=true",),
        expect=("runtime.slurm.gpus_per_task: expected an integer, got a boolean",),
    ),
    Case(
        "method-param-bool",
        ("methods=[{name: lth, params: {round_steps: true}}]",),
        expect=("methods[0]: method 'lth': params.round_steps: expected an integer, got a boolean",),
        cli=True,
    ),
    # 4. duplicate keys: the file, the key path and both lines
    Case("dup-top-level", edit=DUP_TOP, expect=("duplicate key train on lines 2 and",), cli=True),
    Case("dup-nested", edit=DUP_NESTED, expect=("duplicate key train.steps on lines",)),
    Case("dup-in-list-item", edit=DUP_IN_LIST, expect=("duplicate key datasets[0].synthetic.seed on lines",)),
    Case("dup-flow-sequence-key", edit=DUP_FLOW, expect=("duplicate key sparsities on lines 2 and",)),
    Case(
        "dup-in-override",
        ("train={steps: 1, steps: 2}",),
        expect=("duplicate key steps on line 1",),
        names="override 'train={steps: 1, steps: 2}': the value has a duplicate key",
    ),
    # 5. a config that is not UTF-8
    Case(
        "latin-1-file",
        edit=lambda text: text.replace("name: tiny", "name: tiny  # caf\xe9").encode("latin-1"),
        expect=("not UTF-8 text (byte 0xe9 at offset 17: invalid continuation byte)",),
        cli=True,
    ),
    Case(
        "utf-16-file",
        edit=lambda text: text.encode("utf-16"),
        expect=("not UTF-8 text (byte 0xff at offset 0: invalid start byte)",),
    ),
    # 6. control characters in what is written into the sbatch script
    Case(
        "slurm-partition-newline",
        ('runtime.slurm.partition="gpu\\n#SBATCH --exclusive"',),
        expect=("runtime.slurm.partition: holds the control character '\\n' at offset 3", "one line of text"),
        cli=True,
    ),
    Case(
        "slurm-account-carriage-return",
        ('runtime.slurm.account="lab\\r"',),
        expect=("runtime.slurm.account: holds the control character '\\r' at offset 3",),
    ),
    Case(
        "slurm-qos-tab",
        ('runtime.slurm.qos="a\\tb"',),
        expect=("runtime.slurm.qos: holds the control character",),
    ),
    Case(
        "slurm-constraint-nul",
        ('runtime.slurm.constraint="a100\\0"',),
        expect=("runtime.slurm.constraint: holds the control character '\\x00'",),
    ),
    Case(
        "slurm-time-newline",
        ('runtime.slurm.time="4:00:00\\n"',),
        expect=("runtime.slurm.time: holds the control character '\\n' at offset 7",),
    ),
    Case(
        "slurm-extra-key-newline",
        ('runtime.slurm.extra={"mail\\ntype": END}',),
        expect=("runtime.slurm.extra: key 'mail\\ntype' holds the control character '\\n'",),
    ),
    Case(
        "slurm-extra-value-newline",
        ('runtime.slurm.extra={mail-type: "END\\n#SBATCH --x"}',),
        expect=("runtime.slurm.extra: ['mail-type'] holds the control character '\\n' at offset 3",),
    ),
    Case(
        "slurm-setup-newline",
        ('runtime.slurm.setup=["module load cuda", "source .venv/bin/activate\\nrm -rf ~"]',),
        expect=(
            "runtime.slurm.setup: [1] holds the control character '\\n'",
            "one shell command per setup item",
        ),
    ),
    Case(
        "slurm-line-separator",
        ('runtime.slurm.partition="gpu\\u2028x"',),
        expect=("runtime.slurm.partition: holds the control character '\\u2028'",),
    ),
    # 7. the rewind step of the dense stage: within its steps, and leaving steps to retrain for lth
    Case(
        "rewind-beyond-steps",
        ("train.rewind_step=5000",),
        expect=("train.rewind_step: 5000 is beyond steps = 6", "(got 5000)"),
        cli=True,
    ),
    Case(
        "rewind-at-steps-lth",
        ("train.rewind_step=6", "methods=[{name: lth}]"),
        expect=(
            "methods[0] (lth) with datasets[0]: the dense schedule has no steps left after the rewind step 6",
            "lower train.rewind_step or set round_steps",
        ),
    ),
    Case(
        "rewind-at-steps-imp-lr-rewind",
        ("train.rewind_step=6", "methods=[{name: imp, params: {lr_rewind: true}}]"),
        expect=("methods[0] (imp(lr_rewind=True)) with datasets[0]: the dense schedule has no steps left",),
    ),
    # Legitimate configs: nothing above may break them.
    Case("ok-int-for-float", ("train.lr=1", "finetune.weight_decay=0")),
    Case("ok-yaml-string-float", ("train.lr=1e-3",)),  # YAML 1.1 reads 1e-3 as a string; pydantic parses it
    Case("ok-bool-fields", ("runtime.pin_memory=true", "runtime.tensorboard=true", "controls=false")),
    Case("ok-method-bool-param", ("methods=[{name: imp, params: {lr_rewind: true}}]",)),
    Case("ok-slurm-extra-bool-and-int", ("runtime.slurm.extra={requeue: true, nodes: 1, mail-type: END}",)),
    Case("ok-slurm-setup", ('runtime.slurm.setup=["module load cuda/12.1", "source .venv/bin/activate"]',)),
    Case("ok-largest-seed", (f"seeds=[0, {MAX_SEED}]", f"datasets[0].split_seed={MAX_SEED}")),
    Case("ok-rewind-at-steps", ("train.rewind_step=6",)),  # magnitude/random never rewind
    Case(
        "ok-rewind-at-steps-lth-init",
        ("train.rewind_step=6", "methods=[{name: lth, params: {rewind: init}}]"),
    ),
    Case(
        "ok-rewind-at-steps-lth-round-steps",
        ("train.rewind_step=6", "methods=[{name: lth, params: {round_steps: 2}}]"),
    ),
    Case("ok-rewind-zero", ("train.rewind_step=0", "methods=[{name: lth}]")),
    Case(
        "ok-merge-keys",
        edit=lambda text: text.replace("train:\n", "train: &t\n").replace(
            "finetune:\n", "finetune:\n  <<: *t\n"
        ),
    ),
]
OVERRIDE_CASES = [c for c in CASES if c.overrides and c.edit is None]


def _config_text(case: Case) -> str | bytes:
    if case.edit is not None:
        return case.edit(BASE_TEXT)
    return yaml.safe_dump(apply_overrides(BASE, case.overrides), sort_keys=False, allow_unicode=False)


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.id}.yaml"
    text = _config_text(case)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _assert_error(message: str, case: Case, source: str) -> None:
    assert (case.names or source) in message.splitlines()[0], message
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


@pytest.mark.parametrize("case", [c for c in CASES if c.id != "dup-in-override"], ids=lambda c: c.id)
def test_config_case_in_the_file(case, tmp_path):
    """The case written into the config file: an error naming the file and the key, or a clean load."""
    path = _write(tmp_path, case)
    if not case.expect:
        load_matrix(path)
        return
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    _assert_error(str(info.value), case, str(path))


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=lambda c: c.id)
def test_config_case_as_a_command_line_override(case, tmp_path):
    """The same case given as ``key=value`` on the command line: the same error as in the file."""
    path = tmp_path / "base.yaml"
    path.write_text(BASE_TEXT)
    if not case.expect:
        load_matrix(path, case.overrides)
        return
    with pytest.raises(ConfigError) as info:
        load_matrix(path, case.overrides)
    _assert_error(str(info.value), case, str(path))


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=lambda c: c.id)
def test_config_case_through_the_cli(case, tmp_path, capsys):
    """`mtlprune plan` exits 2 with `error: <file>: ...` on stderr, and nothing on stdout."""
    path = _write(tmp_path, case)
    assert main(["plan", str(path), "--store", str(tmp_path / "store")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}"), captured.err
    _assert_error(captured.err, case, str(path))
    assert captured.out == ""
    assert not (tmp_path / "store").exists()


def test_duplicate_key_lines_are_both_named(tmp_path):
    """Both line numbers are the real ones (the rows above check the key path and the first)."""
    text = DUP_NESTED(BASE_TEXT)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    first, second = _line_of(text, "steps: 6"), _line_of(text, "steps: 7")
    assert second == first + 1
    with pytest.raises(ConfigError, match=rf"duplicate key train\.steps on lines {first} and {second} "):
        load_matrix(path)


def test_a_real_bool_is_kept_and_a_count_stays_an_int():
    matrix = parse_matrix(
        apply_overrides(BASE, ["runtime.pin_memory=true", "train.lr=1", "controls=false"]), "<row>"
    )
    assert matrix.runtime.pin_memory is True and matrix.controls is False
    assert matrix.train.lr == 1.0 and isinstance(matrix.train.lr, float)


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_still_loads(config):
    assert load_matrix(config).expand()


# ------------------------------------------------------------------- 8. runtime.device: cuda without CUDA
@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_run_refuses_cuda_on_a_machine_without_it_before_any_work(no_cuda, tmp_path, capsys):
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(tiny_matrix_dict(runtime={"device": "cuda"})))
    store = tmp_path / "store"
    assert main(["run", str(path), "--store", str(store), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: runtime.device: cuda, but torch.cuda.is_available() is False on this machine "
        f"({socket.gethostname()}): --executor local runs the stages here"
    ), err
    assert "runtime.device=cpu" in err and "--executor slurm" in err and len(err.splitlines()) == 1
    assert not store.exists()  # nothing written, nothing run


@pytest.mark.parametrize(
    ("executor", "refused"), [("local", True), ("submitit-local", True), ("slurm", False)]
)
def test_only_executors_that_run_here_need_cuda_here(no_cuda, executor, refused):
    runtime = RuntimeSpec(device="cuda")
    if refused:
        with pytest.raises(ValueError, match=f"--executor {executor} runs the stages here"):
            check_device(runtime, executor)
    else:
        check_device(runtime, executor)  # a login node submits to GPU nodes
    for device in ("auto", "cpu"):
        check_device(RuntimeSpec(device=device), executor)


def test_plan_warns_about_cuda_on_a_machine_without_it(no_cuda, tmp_path, capsys):
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(tiny_matrix_dict(runtime={"device": "cuda"})))
    assert main(["plan", str(path), "--store", str(tmp_path / "store")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert lines == [
        "warning: runtime.device: cuda, but torch.cuda.is_available() is False on this machine "
        f"({socket.gethostname()}): `mtlprune run` with --executor local or submitit-local will refuse "
        "here; --executor slurm needs GPU nodes (runtime.slurm.gpus_per_task)"
    ]
