"""What every dense-prediction loader shares: the format error, the JSON listing, and seeded augmentation.

A loader subclasses :class:`AugmentedDataset` and provides ``load_raw(index)`` (the decoded, unaugmented
sample: ``image`` uint8 (3,H,W) plus the used targets) and two facts about its targets: how a target is
mirrored (``flip_target``; normals negate x) and what fills padding (``pad_fill``). Augmentation is a pure
function of (seed, epoch, index), so a resumed run and any number of loader workers see the same batches.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mtlprune.spec.load import read_utf8
from mtlprune.vocabulary import Vocabulary, check_protocol

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class DataFormatError(ValueError):
    """A dataset file or listing that does not match the documented format; the message names it."""


def read_listing_text(path: Path) -> str:
    """The text of a listing; bytes that are not UTF-8 are a DataFormatError naming the file and offset."""
    return read_utf8(path, DataFormatError, "not valid JSON: a listing is UTF-8 JSON")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(header: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk of a PNG's first 24 bytes, or None when they are not a PNG's."""
    if len(header) < 24 or header[:8] != _PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def check_pixel_limit(path: Path, header: bytes) -> None:
    """Refuse, before decoding, a PNG whose header claims more pixels than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``): a corrupt or hostile file would otherwise take gigabytes to decode."""
    from PIL import Image

    size = png_size(header)
    limit = Image.MAX_IMAGE_PIXELS
    if size is not None and limit is not None and size[0] * size[1] > limit:
        raise bomb_error(path, size)


def bomb_error(path: Path, size: tuple[int, int] | None) -> DataFormatError:
    """The error for an image over Pillow's pixel limit (``size``: (width, height) when known)."""
    from PIL import Image

    claimed = f"{size[1]}×{size[0]} (H×W, {size[0] * size[1]:,} pixels)" if size else "a size"
    return DataFormatError(
        f"{path}: the image header claims {claimed}, over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit "
        "(PIL.Image.MAX_IMAGE_PIXELS) for a frame: a corrupt file or a decompression bomb; not decoded"
    )


def read_listing(
    root: Path, listing_name: str, split: str, fields: Sequence[str], layout: str
) -> list[list[str]]:
    """The entries of one split of a JSON listing, each a list of ``len(fields)`` relative paths.

    Anything else (missing file, bad JSON, missing split, an empty split, a malformed entry) is a
    :class:`DataFormatError` naming the listing, the entry and what was expected.
    """
    listing = root / listing_name
    if not listing.is_file():
        raise DataFormatError(f"{listing}: listing not found (expected the {layout} layout under {root})")
    try:
        data = json.loads(read_listing_text(listing))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{listing}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise DataFormatError(f"{listing}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(f"{listing}: expected a key {split!r} holding a list of samples; found {keys}")
    entries = data[split]
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{listing}: {split!r} must be a non-empty list of samples")
    for i, entry in enumerate(entries):
        ok = (
            isinstance(entry, list)
            and len(entry) == len(fields)
            and all(isinstance(p, str) and p and not Path(p).is_absolute() for p in entry)
        )
        if not ok:
            raise DataFormatError(
                f"{listing}: {split}[{i}] must be a list of {len(fields)} relative paths "
                f"[{', '.join(fields)}], got {entry!r}"
            )
    return entries


# The listing splits a run reads (mtlprune.engine.data: `val` is carved from `train`); other keys are never
# read.
RUN_SPLITS = ("train", "test")


def listed_files(
    root: Path, listing_name: str, split_dirs: dict[str, str], fields: Sequence[str], layout: str
) -> list[str]:
    """The listing and every file of the ``split_dirs`` splits, as sorted unique POSIX paths under ``root``.

    ``split_dirs`` maps a listing key to the folder its entries are relative to (``""``: the root). This is
    what a dataset's content fingerprint hashes (bench/plan/fingerprint.py); listing errors name the listing.
    """
    files = {listing_name}
    for split, folder in split_dirs.items():
        for entry in read_listing(root, listing_name, split, fields, layout):
            files.update(posixpath.normpath(posixpath.join(folder, p)) for p in entry)
    return sorted(files)


class AugmentedDataset(Dataset):
    """Task selection, the seeded train augmentation and the model-input encoding shared by all loaders."""

    task_channels: ClassVar[dict[str, int]] = {}
    dataset_label = "dataset"
    # What the engine and the analysis ask of a dataset plugin besides its samples (docs/adding_a_dataset.md):
    # its metric vocabulary (registered, torch-free), its losses and its metric accumulators per protocol.
    vocabulary: ClassVar[Vocabulary]
    # Its JSON listing (file name under the root, the fields of an entry), and what `mtlprune plan` shows
    # beside the samples a root holds: the split sizes of the published data (empty where none are
    # published) and, in a few words, where they come from (docs/datasets.md).
    listing_name: ClassVar[str]
    entry_fields: ClassVar[tuple[str, ...]] = ()
    expected_counts: ClassVar[dict[str, int]] = {}
    expected_source: ClassVar[str] = ""

    @classmethod
    def count_samples(cls, root: str | Path) -> dict[str, int]:
        """Samples per split a run reads (the entries of the listing's ``train`` and ``test`` lists): one JSON
        read, cheap for any dataset size; a missing or malformed listing is a DataFormatError naming it."""
        return {
            split: len(read_listing(Path(root), cls.listing_name, split, cls.entry_fields, cls.dataset_label))
            for split in RUN_SPLITS
        }

    @classmethod
    def losses(
        cls, tasks: tuple[str, ...], protocol: str, class_weights: Tensor | None = None
    ) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
        """Task → ``fn(pred, target)`` under ``protocol`` (mtlprune.engine.tasks.make_losses asks here)."""
        raise NotImplementedError(f"{cls.__name__} declares no losses")

    @classmethod
    def metric(cls, task: str, protocol: str, class_weights: Tensor | None = None) -> Any:
        """A fresh accumulator (``update(pred, target)``, ``compute() -> {metric: value}``) for ``task``
        under ``protocol`` (mtlprune.engine.metrics.make_metric asks here)."""
        raise NotImplementedError(f"{cls.__name__} declares no metrics")

    def __init__(
        self,
        tasks: Sequence[str],
        augment: bool,
        crop: tuple[int, int],
        scale: tuple[float, float],
        flip: bool,
        seed: int,
        protocol: str,
    ) -> None:
        unknown = [t for t in tasks if t not in self.task_channels]
        if unknown:
            raise ValueError(
                f"unknown {self.dataset_label} task(s) {unknown}; allowed: {list(self.task_channels)}"
            )
        check_protocol(protocol)
        self.tasks_used = tuple(tasks)
        self.augment, self.crop, self.scale, self.flip = augment, tuple(crop), tuple(scale), flip
        self.seed, self.protocol, self.epoch = seed, protocol, 0
        self.entries: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index) only."""
        self.epoch = epoch

    def load_raw(self, index: int) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def flip_target(self, key: str, value: Tensor) -> Tensor:
        """Mirror one map horizontally (a loader overrides this for vector targets such as normals)."""
        return value.flip(-1)

    def pad_fill(self, key: str) -> float:  # pragma: no cover - abstract
        """The value that padding takes in map ``key`` (``image`` pads with 0)."""
        raise NotImplementedError

    def protocol_frame(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """The decoded sample as the protocol's pipeline sees it before augmentation (here: unchanged).

        A loader overrides this where the ``adapmtl`` reference resizes before augmenting or evaluates at
        a fixed size (:meth:`reference_resize` does it the reference's way)."""
        return sample

    def reference_resize(
        self, sample: dict[str, Tensor], size: tuple[int, int], linear_image: bool = True
    ) -> dict[str, Tensor]:
        """Every map of ``sample`` at ``size`` as the reference's ``cv2.resize`` makes it
        (:mod:`mtlprune.datasets.cvresize`): the image INTER_LINEAR (uint8 stays uint8, rounded as OpenCV
        rounds; float stays float) unless ``linear_image`` is false, every label map INTER_NEAREST."""
        from mtlprune.datasets.cvresize import resize_linear, resize_nearest

        size = (int(size[0]), int(size[1]))
        return {
            key: resize_linear(value, size)
            if key == "image" and linear_image
            else resize_nearest(value, size)
            for key, value in sample.items()
        }

    def scaled_size(self, h: int, w: int, s: float) -> tuple[int, int]:
        """(H, W) of a frame scaled by ``s`` for training: ``round(h·s)`` (``standard``); the reference's
        ``int(h·s)``, truncated, under ``adapmtl``."""
        if self.protocol == "adapmtl":
            return max(1, int(h * s)), max(1, int(w * s))
        return max(1, round(h * s)), max(1, round(w * s))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.protocol_frame(self.load_raw(index))
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            sample = self._augment(sample, rng)
        image = sample.pop("image").float().div_(255.0)
        out: dict[str, Any] = {
            "input": (image - IMAGENET_MEAN) / IMAGENET_STD,
            "name": self.entries[index][0],
        }
        for task in self.tasks_used:
            out[task] = sample[task]
        return out

    def _augment(self, sample: dict[str, Tensor], rng: np.random.Generator) -> dict[str, Tensor]:
        """Random scale (image bilinear, labels nearest), horizontal flip, pad and random crop.

        Draws in a fixed order (scale, flip, crop offsets); nearest resampling keeps labels, 255, NaN exact.
        Under ``adapmtl`` the scaled size and the resampling are the reference's (:meth:`scaled_size`,
        :meth:`reference_resize`).
        """
        h, w = sample["image"].shape[-2:]
        s = rng.uniform(*self.scale)
        size = self.scaled_size(int(h), int(w), s)
        if self.protocol == "adapmtl":
            out = self.reference_resize(sample, size)
        else:
            out = {key: _scale_map(key, value, size) for key, value in sample.items()}
        if self.flip and rng.random() < 0.5:
            out = {key: self.flip_target(key, value) for key, value in out.items()}
        ch, cw = self.crop
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        top = int(rng.integers(0, size[0] + pad_h - ch + 1))
        left = int(rng.integers(0, size[1] + pad_w - cw + 1))
        for key, value in out.items():
            if pad_h or pad_w:
                pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
                value = F.pad(value, pad, value=0.0 if key == "image" else self.pad_fill(key))
            out[key] = value[..., top : top + ch, left : left + cw]
        return out


def _scale_map(key: str, value: Tensor, size: tuple[int, int]) -> Tensor:
    """One map at ``size`` as the ``standard`` protocol scales it: the image bilinear (half-pixel centres)
    and rounded back to its dtype, every label map nearest."""
    x = value[None].float() if value.ndim == 3 else value[None, None].float()
    if key == "image":
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
        x = x.round_().clamp_(0, 255)
    else:
        x = F.interpolate(x, size=size, mode="nearest")[0]
    return x.to(value.dtype) if value.ndim == 3 else x[0].to(value.dtype)
