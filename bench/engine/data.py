"""Dataset construction from a DataSpec, synthetic data caching, and the deterministic batch stream.

The batch of step k is a pure function of (seed, k): each epoch's order comes from a generator seeded by
(seed, epoch), and augmentation draws from (seed, epoch, index). A resumed run therefore sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from mtlprune.registry import DATASETS
from mtlprune.spec import DataSpec, spec_hash


def dataset_root(data: DataSpec, store: Path) -> Path:
    """Where the data lives: the user's root, or the synthetic copy cached in the store (rendered once)."""
    if data.source == "disk":
        root = data.resolved_root()
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


def carve_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices of a training listing of n samples: a seeded random share for validation."""
    if fraction == 0:
        return list(range(n)), []
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise ValueError(f"val_fraction {fraction} of {n} training samples leaves nothing to train on")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


class SplitView(Dataset):
    """A subset of a dataset by index that still looks like the dataset (tasks, class weights, set_epoch)."""

    def __init__(self, base: Any, indices: list[int], name: str) -> None:
        self.base, self.indices, self.name = base, indices, name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[self.indices[index]]

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.base, name)


def build_dataset(data: DataSpec, store: Path, split: str, seed: int = 0, protocol: str = "standard") -> Any:
    """`train` and `val` are carved from the training listing (DataSpec.val_fraction); `test` is untouched.

    ``protocol`` goes to the loader, which may follow the reference pipeline under ``adapmtl`` (NYU-v2: the
    flip does not negate normal x).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: 'train', 'val', 'test'")
    cls = DATASETS.get(data.dataset)
    root = dataset_root(data, store)
    listing_split = "test" if split == "test" else "train"
    base = cls(
        root,
        listing_split,
        tasks=data.tasks,
        augment=split == "train",
        crop=data.crop,
        scale=data.scale,
        flip=data.flip,
        seed=seed,
        protocol=protocol,
    )
    if split == "test":
        return base
    train_idx, val_idx = carve_validation(len(base), data.val_fraction, data.split_seed)
    if split == "val" and not val_idx:
        raise ValueError("no validation split: set data.val_fraction > 0 to carve one from train")
    return SplitView(base, train_idx if split == "train" else val_idx, split)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, sample indices) of optimizer step `step`: drop-last epochs of a seeded permutation."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training split ({n} samples)")
    epoch, i = divmod(step, n // batch_size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)[i * batch_size : (i + 1) * batch_size]
    return epoch, [int(j) for j in order]


def batch_at(dataset: Any, batch_size: int, seed: int, step: int) -> dict[str, Any]:
    """The training batch of optimizer step `step`."""
    epoch, indices = batch_indices(len(dataset), batch_size, seed, step)
    dataset.set_epoch(epoch)
    return default_collate([dataset[j] for j in indices])


class _StepBatches(Dataset):
    """Item k = the whole batch of step start + k, so DataLoader workers build batches in step order."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, start: int, steps: int) -> None:
        self.dataset, self.batch_size, self.seed, self.start, self.steps = (
            dataset,
            batch_size,
            seed,
            start,
            steps,
        )

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> dict[str, Any]:
        return batch_at(self.dataset, self.batch_size, self.seed, self.start + k)


def batch_stream(
    dataset: Any,
    batch_size: int,
    seed: int,
    start: int = 0,
    steps: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict[str, Any]]:
    """Batches of steps start, start+1, ...; identical with any number of loader worker processes.

    ``pin_memory`` (CUDA only) puts batches in page-locked memory so host→device copies can be asynchronous.
    """
    pin = pin_memory and torch.cuda.is_available()
    if num_workers == 0 or steps is None:
        step = start
        while steps is None or step < start + steps:
            batch = batch_at(dataset, batch_size, seed, step)
            yield (
                {k: v.pin_memory() if pin and torch.is_tensor(v) else v for k, v in batch.items()}
                if pin
                else batch
            )
            step += 1
        return
    loader = DataLoader(
        _StepBatches(dataset, batch_size, seed, start, steps),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=2,
    )
    yield from loader


def eval_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    for start in range(0, len(dataset), batch_size):
        yield default_collate([dataset[j] for j in range(start, min(start + batch_size, len(dataset)))])
