"""Whether this machine can run a matrix's stages on the device its config asks for, checked before any work.

``runtime.device: cuda`` is a valid config anywhere: a Slurm login node without a GPU submits it to GPU
nodes. Only the executors that run stages on this machine (``local``, ``submitit-local``) need CUDA here;
``mtlprune run`` refuses before any work when it is missing, and ``mtlprune plan`` warns.
"""

from __future__ import annotations

import socket

from mtlprune.spec import RuntimeSpec

# The executors whose stages run on this machine.
RUNS_HERE = ("local", "submitit-local")


def missing_device(runtime: RuntimeSpec) -> str | None:
    """What is missing for ``runtime.device`` on this machine, or None when its stages can run here."""
    if runtime.device != "cuda":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return (
        f"runtime.device: cuda, but torch.cuda.is_available() is False on this machine "
        f"({socket.gethostname()})"
    )


def check_device(runtime: RuntimeSpec, executor: str) -> None:
    """Refuse (ValueError) a run whose stages would start here on a device this machine lacks."""
    problem = missing_device(runtime)
    if problem and executor in RUNS_HERE:
        raise ValueError(
            f"{problem}: --executor {executor} runs the stages here; use runtime.device: auto or cpu "
            "(override: runtime.device=cpu), or submit to GPU nodes with --executor slurm"
        )


def device_warning(runtime: RuntimeSpec) -> str | None:
    """``mtlprune plan``'s warning for a device this machine lacks, or None."""
    problem = missing_device(runtime)
    if problem is None:
        return None
    return (
        f"{problem}: `mtlprune run` with --executor local or submitit-local will refuse here; "
        "--executor slurm needs GPU nodes (runtime.slurm.gpus_per_task)"
    )
