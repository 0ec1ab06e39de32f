"""Benchmarks (`tox -e perf`) train stages by design: every one of them is `slow` (see tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PERF in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
