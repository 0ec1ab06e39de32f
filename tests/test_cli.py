"""`mtlprune ...` subcommands: listings, plan, status, data synth, and clear config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlprune.cli import main
from mtlprune.execution.matrix import run_matrix
from mtlprune.store import Store
from tests.helpers import tiny_matrix, tiny_matrix_dict

ROOT = Path(__file__).resolve().parents[1]


def _write_config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_matrix_dict(**overrides)))
    return path


def test_methods_lists_names_docs_and_params(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("magnitude", "random", "gmp", "lth", "imp", "snip", "grasp", "synflow", "rigl"):
        assert f"│ {name} " in out, name
    assert "One-shot magnitude pruning" in out and "scope: 'global' | 'layer' | 'component' = 'global'" in out
    assert "starts from: init" in out and "starts from: dense" in out


def test_archs_and_datasets_listings(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    assert "deeplab_resnet34" in out and "head_width: number = 1.0" in out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "nyuv2" in out and "segment_semantic (40 ch)" in out and "nyu_v2_3task.json" in out


def test_plan_lists_dense_stages_and_cells_without_running(tmp_path, capsys):
    config = _write_config(tmp_path)
    store = tmp_path / "store"
    assert main(["plan", str(config), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    matrix = tiny_matrix()
    assert "1 dense stage(s), 4 cell(s)" in out
    for cell in matrix.expand():
        assert cell.run_id in out
    assert out.count("pending │") == 5  # the status column of each stage
    assert "estimate: 5 pending stage(s), no finished stage to estimate from yet (0 done)" in out
    assert not store.exists()  # nothing ran, nothing was written


def _plan_line(out: str, start: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith(start))


def test_plan_prices_each_stage_from_a_step_time(tmp_path, capsys):
    config = _write_config(tmp_path)  # 6 dense steps; random and magnitude at 0.5 and 0.9, 2 steps each
    assert main(["plan", str(config), "--store", str(tmp_path / "store"), "--step-time", "600"]) == 0
    out = capsys.readouterr().out
    assert _plan_line(out, "steps:").startswith(
        "steps: 14 optimizer steps in all: 6 in 1 dense stage(s), 8 in 4 cell(s)"
    )
    # dense 6 × 600 s + evaluating 4 test frames (4 / batch 4 × 600 s / 3 = 200 s) = 3800 s; each cell 1400 s
    assert _plan_line(out, "time:") == "time: 5 pending stage(s) ≈ 2 h 37 min = 2.6 CPU-hours"
    # 3800 s × 1.5 = 95 min → 1:45:00; 1400 s × 1.5 = 35 min → 0:45:00
    slurm = _plan_line(out, "Slurm per task:")
    assert slurm.startswith(
        "Slurm per task: dense stages --time 1:45:00 --mem 7G; cells --time 0:45:00 --mem 7G"
    )
    assert "compute per stage of nyuv2 deeplab_resnet34 w0.125/h0.03125, from 600 s per step" in out
    assert "pending stage(s) need more than runtime.slurm.time" not in out  # 4:00:00 covers them


def test_plan_says_which_stages_outgrow_the_configured_slurm_time(tmp_path, capsys):
    config = _write_config(tmp_path, runtime={"device": "cpu", "slurm": {"time": "1:00:00"}})
    assert main(["plan", str(config), "--store", str(tmp_path / "store"), "--step-time", "600"]) == 0
    out = capsys.readouterr().out
    assert _plan_line(out, "1 pending stage(s) need more than runtime.slurm.time 1:00:00")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "error: --step-time '-1' must be a number of seconds > 0, got -1.0"),
        ("abc", "error: --step-time 'abc': neither a number of seconds nor an existing file"),
        (
            "missing.json",
            "error: --step-time 'missing.json': neither a number of seconds nor an existing file",
        ),
        ("{nokey}", "missing key 'seconds_per_step.dense'"),
    ],
)
def test_plan_rejects_a_bad_step_time_in_one_line(tmp_path, capsys, value, message):
    if value == "{nokey}":
        value = str(tmp_path / "times.json")
        Path(value).write_text(json.dumps({"device": "cpu"}))
    config = _write_config(tmp_path)
    assert main(["plan", str(config), "--store", str(tmp_path / "store"), "--step-time", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) or (message in err and value in err)
    assert err.count("\n") == 1


@pytest.mark.slow
def test_status_reports_done_pending_and_failed(tmp_path, capsys):
    config = _write_config(tmp_path, methods=[{"name": "magnitude"}], sparsities=[0.5])
    store = Store(tmp_path / "store")
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5])
    assert main(["status", str(config), "--store", str(store.root)]) == 0
    assert "2 pending" in capsys.readouterr().out
    run_matrix(matrix, store, show_progress=False)
    assert main(["status", str(config), "--store", str(store.root)]) == 0
    assert "2 done" in capsys.readouterr().out
    cell = matrix.expand()[0]
    (store.run_dir(cell.run_id) / "result.json").unlink()
    store.write_status(cell.run_id, status="failed", error="RuntimeError: out of memory")
    assert main(["status", str(config), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out and "RuntimeError: out of memory" in out


def test_config_error_exits_2_with_the_key_path(tmp_path, capsys):
    config = _write_config(tmp_path, methods=[{"name": "magnitude", "params": {"scop": "global"}}])
    assert main(["plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        "tiny.yaml" in err
        and "methods[0]" in err
        and "unknown key 'scop'" in err
        and "did you mean 'scope'" in err
    )


def test_data_synth_writes_the_nyuv2_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--format", "nyuv2", "--out", str(out), "--n", "5", "--size", "24x32"]) == 0
    listing = json.loads((out / "nyu_v2_3task.json").read_text())
    assert len(listing["train"]) == 4 and len(listing["test"]) == 1
    assert all((out / p).is_file() for entry in listing["train"] + listing["test"] for p in entry)
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "24by32"])


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "mtlprune", "datasets"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "nyuv2" in proc.stdout


def test_plugin_flag_registers_an_outside_method(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_prune_plugin.py").write_text(
        "from mtlprune.registry import METHODS\n"
        "from mtlprune.methods.base import PruningMethod\n\n"
        "@METHODS.register('outside-method')\n"
        "class Outside(PruningMethod):\n"
        '    """A method living outside the repository."""\n\n'
        "    def run(self, ctx):\n"
        "        ctx.apply_masks(ctx.select_masks({n: p.abs() for n, p in ctx.prunable().items()}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from mtlprune.registry import METHODS

    try:
        assert main(["--plugin", "my_prune_plugin", "methods"]) == 0
        out = capsys.readouterr().out
        assert "outside-method" in out and "A method living outside the repository." in out
        assert main(["--plugin", "no_such_plugin_module", "methods"]) == 2
        assert "cannot import plugin module 'no_such_plugin_module'" in capsys.readouterr().err
    finally:
        METHODS._items.pop("outside-method", None)
        from mtlprune import registry

        registry._loaded.discard("my_prune_plugin")  # the module is gone with tmp_path


@pytest.mark.slow
def test_run_writes_the_manifest_that_report_reads_and_extending_shows_missing_cells(tmp_path, capsys):
    store = tmp_path / "store"
    config = _write_config(tmp_path, methods=[{"name": "magnitude"}], sparsities=[0.5])
    assert main(["run", str(config), "--store", str(store), "--no-progress"]) == 0
    manifest = json.loads((store / "tiny" / "matrix.json").read_text())
    assert len(manifest["cells"]) == 1 and len(manifest["dense"]) == 1
    # the config grows by a sparsity level and is run only in part (its new cell never starts)
    config = _write_config(tmp_path, methods=[{"name": "magnitude"}], sparsities=[0.5, 0.9])
    from mtlprune.spec import load_matrix
    from mtlprune.store.manifest import write_manifest

    write_manifest(load_matrix(config), Store(store))
    capsys.readouterr()
    assert main(["report", str(config), "--store", str(store), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    new_cell = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5, 0.9]).expand()[1]
    assert new_cell.run_id[:12] in html and "missing" in html


def test_plugin_may_be_a_file_path(tmp_path, capsys):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(
        "from mtlprune import METHODS, OneShotMethod\n\n\n"
        '@METHODS.register("file-plugin-example")\n'
        "class FilePlugin(OneShotMethod):\n"
        '    """A plugin loaded from a file path."""\n\n'
        "    def scores(self, ctx):\n"
        "        return {n: p.detach().abs() for n, p in ctx.prunable().items()}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = [sys.executable, "-m", "mtlprune", "methods", "--plugin", str(plugin)]
    listed = subprocess.run(run, cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "file-plugin-example" in listed.stdout and "A plugin loaded from a file path." in listed.stdout
    # A file that is missing or does not compile registers nothing: checked in this process.
    (tmp_path / "broken.py").write_text("def oops(:\n")
    for bad, message in ((tmp_path / "missing.py", "no such file"), (tmp_path / "broken.py", "SyntaxError")):
        assert main(["methods", "--plugin", str(bad)]) == 2
        stderr = capsys.readouterr().err
        assert f"cannot import plugin module {str(bad)!r}" in stderr and message in stderr
