"""Re-running a finished matrix is cheap: `mtlprune run` on a done store builds nothing and takes under 10 s.

The tiny default matrix (one dense stage, four cells) is run once through ``mtlprune.cli.main``; then the same
command is timed again (with model building disabled, so any stage that ran would fail the test). What
remains is the plan, one stat per stage, the results table and the report. The first run's time is
recorded beside it for scale.
"""

from __future__ import annotations

import time

import yaml

import mtlprune.engine.cell
import mtlprune.engine.dense
from mtlprune.cli import main
from tests.helpers import tiny_matrix_dict

TARGET_S = 10.0


def test_rerun_of_a_finished_matrix(benchmark, tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_matrix_dict()))
    argv = ["run", str(config), "--store", str(tmp_path / "store"), "--no-progress"]
    start = time.perf_counter()
    assert main(argv) == 0
    first_s = time.perf_counter() - start

    def no_model(spec):
        raise AssertionError("a finished matrix must not build a model")

    for module in (mtlprune.engine.dense, mtlprune.engine.cell):
        monkeypatch.setattr(module, "build_model", no_model)
    benchmark.group = "mtlprune run, finished matrix"
    assert benchmark.pedantic(lambda: main(argv), rounds=3, iterations=1, warmup_rounds=0) == 0
    rerun_s = benchmark.stats.stats.median
    benchmark.extra_info.update(first_run_s=first_s, rerun_s=rerun_s, rerun_over_first=rerun_s / first_s)
    print(f"\nfirst run {first_s:.2f} s, re-run when finished {rerun_s:.2f} s (target < {TARGET_S:g} s)")
    assert rerun_s < TARGET_S
