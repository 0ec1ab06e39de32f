"""Compact, torch-free storage of pruning masks: one bit per weight in a NumPy ``.npz`` archive.

A run's masks are what mask analytics read (per-layer sparsity, cross-task IoU, overlap between methods),
so they are stored bit-packed (``numpy.packbits``, 8 weights per byte) beside the tensor names and shapes,
with no pickled objects: ``numpy.load(..., allow_pickle=False)`` reads them, and so can any tool without
torch. ``masks.npz`` holds a run's final keep-masks; ``task_masks.npz`` (methods that select per task, such
as DiSparse) holds each task's own keep-mask under ``<task>/<parameter name>``.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtlprune.store import atomic_write_bytes

MASKS = "masks.npz"
TASK_MASKS = "task_masks.npz"


def _as_bool_array(mask: Any) -> np.ndarray:
    """A NumPy bool array from a bool NumPy array or torch tensor (without importing torch here)."""
    if hasattr(mask, "detach"):  # a torch tensor
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"masks must be boolean, got dtype {array.dtype}")
    return array


def masks_to_bytes(masks: Mapping[str, Any]) -> bytes:
    """The ``.npz`` bytes of ``masks``: names, shapes and bit-packed values, nothing pickled."""
    names = list(masks)
    arrays: dict[str, np.ndarray] = {"names": np.array(names, dtype=np.str_)}
    for i, name in enumerate(names):
        array = _as_bool_array(masks[name])
        arrays[f"shape_{i}"] = np.array(array.shape, dtype=np.int64)
        arrays[f"bits_{i}"] = np.packbits(array.reshape(-1))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_masks(path: Path, masks: Mapping[str, Any]) -> None:
    """Write ``masks`` (name → bool array or tensor) to ``path`` atomically."""
    atomic_write_bytes(path, masks_to_bytes(masks))


def read_masks(path: str | Path) -> dict[str, np.ndarray]:
    """Name → bool array of the shape it was written with; a damaged file is named in the error."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [str(n) for n in archive["names"]]
            out = {}
            for i, name in enumerate(names):
                shape = tuple(int(d) for d in archive[f"shape_{i}"])
                count = int(np.prod(shape, dtype=np.int64))
                bits = np.unpackbits(archive[f"bits_{i}"], count=count)
                out[name] = bits.astype(np.bool_).reshape(shape)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable mask archive ({type(exc).__name__}: {exc})") from None
    return out


def write_task_masks(path: Path, task_masks: Mapping[str, Mapping[str, Any]]) -> None:
    """Each task's own keep-masks under ``<task>/<parameter name>``."""
    write_masks(
        path, {f"{task}/{name}": m for task, masks in task_masks.items() for name, m in masks.items()}
    )


def read_task_masks(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Task → parameter name → bool array, as written by :func:`write_task_masks`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, mask in read_masks(path).items():
        task, name = key.split("/", 1)
        out.setdefault(task, {})[name] = mask
    return out
