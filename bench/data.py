"""Dataset construction from a DataSpec, synthetic data caching, and the deterministic batch stream.

The batch of step k is a pure function of (seed, k): each epoch's order comes from a generator seeded by
(seed, epoch), and augmentation draws from (seed, epoch, index). A resumed run therefore sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from bench.registry import DATASETS
from bench.spec import DataSpec, spec_hash


def dataset_root(data: DataSpec, store: Path) -> Path:
    """Where the data lives: the user's root, or the synthetic copy cached in the store (rendered once)."""
    if data.source == "disk":
        root = Path(data.root or "").expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {root} (data.root) is not a directory")
        return root
    root = store / "data" / f"{data.dataset}-synthetic-{spec_hash(data.synthetic)}"
    if not root.exists():
        s = data.synthetic
        cls = DATASETS.get(data.dataset)
        try:
            cls.synthesize(
                root, n_train=s.n_train, n_test=s.n_test, height=s.height, width=s.width, seed=s.seed
            )
        except ValueError:
            if not root.exists():  # another worker may have finished the same rendering first
                raise
    return root


def build_dataset(data: DataSpec, store: Path, split: str, seed: int = 0) -> Dataset:
    cls = DATASETS.get(data.dataset)
    augment = split == "train"
    return cls(
        dataset_root(data, store),
        split,
        tasks=data.tasks,
        augment=augment,
        crop=data.crop,
        scale=data.scale,
        flip=data.flip,
        seed=seed,
    )


def batch_at(dataset: Any, batch_size: int, seed: int, step: int) -> dict[str, Any]:
    """The training batch of optimizer step `step` (drop-last epochs of a seeded permutation)."""
    n = len(dataset)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training split ({n} samples)")
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)[i * batch_size : (i + 1) * batch_size]
    dataset.set_epoch(epoch)
    return default_collate([dataset[int(j)] for j in order])


def batch_stream(dataset: Any, batch_size: int, seed: int, start: int = 0) -> Iterator[dict[str, Any]]:
    step = start
    while True:
        yield batch_at(dataset, batch_size, seed, step)
        step += 1


def eval_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    for start in range(0, len(dataset), batch_size):
        yield default_collate([dataset[j] for j in range(start, min(start + batch_size, len(dataset)))])
