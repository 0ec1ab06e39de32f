"""`mtlprune data verify`: check a dataset root file by file, through the loader's own decoding.

Every sample of every split in the listing is read with the registered loader's `load_raw`, which checks
existence, decoding, dtypes, value ranges and that a sample's maps share one size; every problem is
collected with its path (nothing stops at the first one, not even an unforeseen error of a loader: that is
reported with the sample's files), and a class histogram of the segmentation labels is counted on the way.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtlprune.datasets.base import DataFormatError, read_listing_text
from mtlprune.registry import DATASETS


@dataclass
class VerifyReport:
    dataset: str
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    class_histogram: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems


def _splits(listing: Path) -> list[str]:
    try:
        data = json.loads(read_listing_text(listing))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{listing}: cannot read the listing ({exc})") from None
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{listing}: expected a JSON object with split lists, got {type(data).__name__}"
        )
    return [split for split in ("train", "val", "test", "test_small") if split in data]


def verify(dataset: str, root: str | Path) -> VerifyReport:
    """Read every listed sample; collect counts, the label histogram, image sizes and every problem."""
    cls = DATASETS.get(dataset)
    report = VerifyReport(dataset, Path(root))
    listing = report.root / cls.listing_name
    try:
        splits = _splits(listing)
        if not {"train", "test"} <= set(splits):
            report.problems.append(f"{listing}: needs both 'train' and 'test' lists, found {splits}")
    except DataFormatError as exc:
        report.problems.append(str(exc))
        return report
    for split in splits:
        try:
            data = cls(report.root, split, tasks=cls.tasks)
        except DataFormatError as exc:
            report.problems.append(str(exc))
            continue
        report.counts[split] = len(data)
        for index in range(len(data)):
            try:
                sample = data.load_raw(index)
            except DataFormatError as exc:
                report.problems.append(str(exc))
                continue
            except Exception as exc:  # a loader's unforeseen failure: name the entry, check the rest
                entry = data.entries[index] if index < len(getattr(data, "entries", ())) else "?"
                report.problems.append(f"{listing}: {split}[{index}] {entry}: {type(exc).__name__}: {exc}")
                continue
            report.sizes[tuple(sample["image"].shape[-2:])] += 1
            if "segment_semantic" in sample:
                labels, counts = torch.unique(sample["segment_semantic"], return_counts=True)
                report.class_histogram.update(dict(zip(labels.tolist(), counts.tolist(), strict=True)))
    return report
