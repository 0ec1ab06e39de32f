"""`mtlprune report` of a 500-cell store: the issue's target is under 30 s (printed, not asserted).

The store is the fake one of tests/fake_store.py (the runner's exact layout, no torch): 2 architectures ×
5 seeds × 10 methods × 5 targets, with failed, running and missing cells. The report draws a fixed number
of figures whatever the number of cells, so its time is dominated by rendering, not by reading results.
"""

from __future__ import annotations

import time

import pytest

from mtlprune.analysis.report import build_report
from tests.fake_store import build_fake_store

METHODS = (
    "magnitude",
    "random",
    "gmp(frequency=10)",
    "snip",
    "adapmtl",
    "disparse-static",
    "lth",
    "imp",
    "rigl",
    "grasp",
)
TARGET_S = 30.0


@pytest.fixture(scope="module")
def store_500(tmp_path_factory):
    root = tmp_path_factory.mktemp("report500") / "store"
    fake = build_fake_store(
        root,
        methods=METHODS,
        targets=(0.5, 0.7, 0.8, 0.9, 0.95),
        seeds=(0, 1, 2, 3, 4),
        failed=range(0, 500, 37),
        running=[11],
        missing=range(5, 500, 53),
        masks=False,
    )
    assert len(fake.cells) == 500
    return root


def test_report_of_500_cells(benchmark, store_500, tmp_path):
    benchmark.group = "report"
    outcomes = []

    def run() -> None:
        start = time.perf_counter()
        outcomes.append((build_report(store_500, out=tmp_path / "report"), time.perf_counter() - start))

    benchmark.pedantic(run, rounds=1, iterations=1)
    outcome, seconds = outcomes[-1]
    benchmark.extra_info.update(seconds=seconds, target_s=TARGET_S, cells=sum(outcome.counts.values()))
    print(f"\nbench report of 500 cells: {seconds:.1f} s (target < {TARGET_S:g} s); {outcome.counts}")
