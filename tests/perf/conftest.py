"""Benchmarks (`tox -e perf`) train stages by design: every one of them is `slow` (see tests/conftest.py).

They run with freed memory kept in the process (mtlprune.execution.heap), as every worker of
``mtlprune run`` does by default (``runtime.keep_freed_memory``): a benchmark measures the step the runner
takes, not the kernel's page faults.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlprune.execution.heap import keep_freed_memory

PERF = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PERF in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _freed_memory_kept() -> None:
    keep_freed_memory()
