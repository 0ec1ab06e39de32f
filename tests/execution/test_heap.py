"""Freed memory kept in the process (runtime.keep_freed_memory): a step reuses the pages of the last."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from mtlprune.execution import claim
from mtlprune.spec import RuntimeSpec
from mtlprune.store import Store

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# One 64 MiB tensor allocated, written and freed 14 times: how many pages the kernel faulted in for each.
PROBE = """
import json, resource, sys
import torch
from mtlprune.execution.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(14):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MiB, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("keep", [True, False])
def test_every_worker_applies_the_runtime_setting(monkeypatch, tmp_path, keep):
    """The claim loop, which every executor's workers run, applies it (on by default)."""
    calls = []
    monkeypatch.setattr(claim, "keep_freed_memory", lambda: calls.append(1) or True)
    runtime = RuntimeSpec() if keep else RuntimeSpec(keep_freed_memory=False)
    assert claim.claim_loop([], Store(tmp_path), runtime) == {}
    assert calls == ([1] if keep else [])


@pytest.mark.slow  # two fresh interpreters importing torch
@pytest.mark.skipif(not GLIBC, reason="needs glibc's malloc (Linux with glibc): mallopt is what it sets")
def test_a_freed_tensor_is_reused_without_faulting_its_pages_in_again():
    pages = (64 << 20) // 4096
    plain, kept = _probe("plain"), _probe("keep")
    assert plain["applied"] is False and kept["applied"] is True
    # glibc's default: each 64 MiB tensor is a fresh mmap, every page faulted in again
    assert all(f >= 0.9 * pages for f in plain["faults"])
    # kept: torch's 64-byte aligned allocations grow the heap for a few rounds (posix_memalign asks for a
    # little more than the freed block), then every round reuses pages already there
    assert kept["faults"][0] >= 0.9 * pages
    assert all(f < 0.01 * pages for f in kept["faults"][-4:])
