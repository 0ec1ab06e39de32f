"""The determinism contract of a stage: one run id, one set of numbers (docs/design.md, "Determinism").

- On a CPU every stage runs with exactly ``STAGE_CPU_THREADS`` (1) torch intra-op thread, whatever
  ``--workers``, the executor or the machine's core count: float reductions then happen in one order, so a
  stage's numbers are bit-identical on any machine with the same torch build and CPU instruction set.
  Parallelism comes from running stages side by side (``--workers``), never from threads inside a stage.
- On a CPU, denormal floats are flushed to zero: as the learning rate decays, gradients and optimizer
  moments reach the denormal range, where x86 arithmetic is many times slower (a 1000-step dense stage of
  the mini tier took 108 s instead of 61 s). Flushing is deterministic and part of the contract (since
  SCHEMA_VERSION 2).
- On CUDA, cuDNN runs its deterministic algorithms (no autotuning) and torch's deterministic-algorithms mode
  is on with ``warn_only``: kernels that have no deterministic implementation (the backward pass of bilinear
  upsampling, a weighted 2-D NLL loss) still run, so CUDA results are repeatable only within a tolerance,
  which ``tools/gpu_check --repeat`` measures.
- Every global RNG a method can touch (python ``random``, NumPy's global state, torch CPU and CUDA) is seeded
  from the stage's identity before the stage's own code runs (:func:`stage_seed`), so nothing a previous stage
  left behind in a worker process can change a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

STAGE_CPU_THREADS = 1
# cuBLAS needs a fixed workspace to be deterministic; it reads the variable when it is first initialised.
CUBLAS_WORKSPACE = ":4096:8"


def stage_seed(run_id: str, purpose: str = "stage") -> int:
    """A 63-bit seed derived from a stage's run id (and what it seeds): the same id, the same draws."""
    digest = hashlib.sha256(f"{run_id}:{purpose}".encode()).hexdigest()
    return int(digest[:16], 16) >> 1


def seed_everything(seed: int) -> None:
    """Seed python ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds the CUDA generators too


@contextlib.contextmanager
def stage_environment(device: torch.device, cuda_threads: int | None = None) -> Iterator[dict[str, Any]]:
    """Run a stage under the determinism contract; yields what ``result.json`` records of it.

    CPU: one intra-op thread for the stage's duration (the previous count comes back afterwards, so a
    notebook or a test keeps its own). CUDA: deterministic cuDNN, deterministic algorithms (warn only) and
    ``cuda_threads`` CPU threads (``runtime.num_threads``) for the host-side work. Both: denormals flushed
    to zero on the CPU for the stage's duration (then back to torch's default, off).
    """
    threads = torch.get_num_threads()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        previous = (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
        if cuda_threads:
            torch.set_num_threads(cuda_threads)
        record = {
            "device_type": "cuda",
            "cpu_threads": torch.get_num_threads(),
            "cuda_deterministic": True,
            "flush_denormal": torch.set_flush_denormal(True),
        }
        try:
            yield record
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[:2]
            torch.use_deterministic_algorithms(previous[2], warn_only=previous[3])
            torch.set_num_threads(threads)
            torch.set_flush_denormal(False)
        return
    torch.set_num_threads(STAGE_CPU_THREADS)
    flushing = torch.set_flush_denormal(True)  # False where the CPU cannot (then nothing changed)
    try:
        yield {"device_type": device.type, "cpu_threads": STAGE_CPU_THREADS, "flush_denormal": flushing}
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch's default; there is no getter to restore anything else
