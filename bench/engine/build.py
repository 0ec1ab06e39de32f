"""What a stage is built from: its device, its model, its data splits, and state files on disk."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mtlprune.engine.data import build_dataset
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.train import Loading
from mtlprune.registry import ARCHS, DATASETS
from mtlprune.spec import DenseSpec, RunSpec, RuntimeSpec
from mtlprune.store import Store, atomic_write_bytes


def resolve_device(runtime: RuntimeSpec) -> torch.device:
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def build_model(spec: DenseSpec | RunSpec) -> MTLModel:
    channels = DATASETS.get(spec.data.dataset).task_channels
    factory = ARCHS.get(spec.arch.name)
    return factory(
        {t: channels[t] for t in spec.data.tasks}, width=spec.arch.width, head_width=spec.arch.head_width
    )


def save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """A state dict saved by :func:`save_state`; a missing or damaged file is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickling/zip errors: their text suggests weights_only=False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:200]}); "
            "`mtlprune store check` says what a run does about it"
        ) from None


def build_splits(spec: DenseSpec | RunSpec, store: Store) -> tuple[Any, Any, Any]:
    """Train, validation (None without a val_fraction) and test sets, built as the protocol prescribes."""
    protocol = spec.eval.protocol
    train_set = build_dataset(spec.data, store.root, "train", seed=spec.seed, protocol=protocol)
    val_set = (
        build_dataset(spec.data, store.root, "val", protocol=protocol) if spec.data.val_fraction > 0 else None
    )
    return train_set, val_set, build_dataset(spec.data, store.root, "test", protocol=protocol)


def split_sizes(train_set: Any, val_set: Any, test_set: Any) -> dict[str, int]:
    return {"train": len(train_set), "val": 0 if val_set is None else len(val_set), "test": len(test_set)}


def loading(runtime: RuntimeSpec, device: torch.device) -> Loading:
    """How a stage's batches reach its device: the runtime's loader workers, memory format, pinning."""
    return Loading(runtime.num_workers, runtime.channels_last, pin_memory(runtime, device))


def pin_memory(runtime: RuntimeSpec, device: torch.device) -> bool:
    return device.type == "cuda" if runtime.pin_memory is None else runtime.pin_memory
