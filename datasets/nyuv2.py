"""NYU-v2 in the AdaShare/AdapMTL on-disk format (adapmtl.md §3.1), read from any root.

Layout: ``nyu_v2_3task.json`` with ``train``/``test`` lists of ``[img png, seg png, normal png, depth npy]``
paths relative to the root; RGB PNG; seg uint8 0..39 with 255 = ignore; normals uint8 (n+1)·127.5 with
(255,255,255) invalid; depth float32 metres (0 = invalid).

Deliberate deviations from the reference loader, all in favour of correctness (DESIGN `standard` protocol):
- the horizontal flip negates the normal x component (v → 255 − v on valid pixels); the reference does not;
- the test split is returned at its native resolution, unchanged; the reference resizes it to 321×321;
- the input is RGB scaled to [0, 1] and normalised with the ImageNet mean/std (what torchvision weights
  expect) instead of BGR 0–255 minus the Caffe mean.

Training augmentation is a pure function of (seed, epoch, index), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from bench.registry import DATASETS

LISTING = "nyu_v2_3task.json"
TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
IGNORE = 255
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class DataFormatError(ValueError):
    """A dataset file or listing that does not match the documented format; the message names it."""


def _read_png(path: Path, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file listed in {LISTING} does not exist") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: not a readable PNG ({exc})") from None
    if arr.dtype != np.uint8:
        raise DataFormatError(f"{path}: expected an 8-bit image, got dtype {arr.dtype}")
    if channels == 1 and arr.ndim != 2:
        raise DataFormatError(f"{path}: expected a single-channel image, got shape {arr.shape}")
    if channels == 3 and (arr.ndim != 3 or arr.shape[2] < 3):
        raise DataFormatError(f"{path}: expected an RGB image, got shape {arr.shape}")
    return arr[..., :3] if channels == 3 else arr


def _read_depth(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file listed in {LISTING} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(
            f"{path}: expected a float (H, W) depth array in metres, got {arr.dtype} {arr.shape}"
        )
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        raise DataFormatError(
            f"{path}: depth must be finite and >= 0 metres (0 = invalid); {int(bad.sum())} pixels are NaN, "
            "inf or negative"
        )
    return arr.astype(np.float32, copy=False)


def read_listing(root: Path, split: str) -> list[list[str]]:
    listing = root / LISTING
    if not listing.is_file():
        raise DataFormatError(
            f"{listing}: listing not found (expected the AdaShare NYU-v2 layout under {root})"
        )
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{listing}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(f"{listing}: expected a key {split!r} holding a list of samples; found {keys}")
    entries = data[split]
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{listing}: {split!r} must be a non-empty list of samples")
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 4 and all(isinstance(p, str) for p in entry)):
            raise DataFormatError(
                f"{listing}: {split}[{i}] must be [img png, seg png, normal png, depth npy], got {entry!r}"
            )
    return entries


def flip_normals(normal: Tensor) -> Tensor:
    """Mirror encoded normals horizontally: negate x (v → 255 − v) except at invalid (255,255,255) pixels."""
    flipped = normal.flip(-1)
    invalid = (flipped == IGNORE).all(dim=0)
    x = torch.where(invalid, flipped[0], 255 - flipped[0])
    return torch.cat([x[None], flipped[1:]], dim=0)


@DATASETS.register("nyuv2")
class NYUv2(Dataset):
    """NYU-v2 (40-class segmentation, surface normals, depth) in the AdaShare format."""

    tasks = tuple(TASK_CHANNELS)
    task_channels = TASK_CHANNELS
    listing_name = LISTING

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: tuple[str, ...] | list[str] = tuple(TASK_CHANNELS),
        augment: bool = False,
        crop: tuple[int, int] = (321, 321),
        scale: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.entries = read_listing(self.root, split)
        unknown = [t for t in tasks if t not in TASK_CHANNELS]
        if unknown:
            raise ValueError(f"unknown NYU-v2 task(s) {unknown}; allowed: {list(TASK_CHANNELS)}")
        self.tasks_used = tuple(tasks)
        self.augment, self.crop, self.scale, self.flip, self.seed = (
            augment,
            tuple(crop),
            tuple(scale),
            flip,
            seed,
        )
        self.epoch = 0

    @staticmethod
    def synthesize(out: Path, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
        from datasets.synthetic import write_nyuv2

        return write_nyuv2(out, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index) only."""
        self.epoch = epoch

    def load_raw(self, index: int) -> dict[str, Tensor]:
        """The sample as stored: image uint8 (3,H,W), seg int64 (H,W), normal uint8 (3,H,W), depth (1,H,W)."""
        img_p, seg_p, normal_p, depth_p = (self.root / p for p in self.entries[index])
        image = _read_png(img_p, 3)
        sample = {"image": torch.from_numpy(image.copy()).permute(2, 0, 1)}
        shape = image.shape[:2]
        if "segment_semantic" in self.tasks_used:
            seg = _read_png(seg_p, 1)
            bad = (seg >= 40) & (seg != IGNORE)
            if bad.any():
                raise DataFormatError(
                    f"{seg_p}: class ids must be 0..39 or 255, found {sorted(set(seg[bad].tolist()))[:5]}"
                )
            sample["segment_semantic"] = torch.from_numpy(seg.astype(np.int64))
        if "normal" in self.tasks_used:
            sample["normal"] = torch.from_numpy(_read_png(normal_p, 3).copy()).permute(2, 0, 1)
        if "depth_zbuffer" in self.tasks_used:
            sample["depth_zbuffer"] = torch.from_numpy(_read_depth(depth_p))[None]
        paths = {"segment_semantic": seg_p, "normal": normal_p, "depth_zbuffer": depth_p}
        for key, value in sample.items():
            if tuple(value.shape[-2:]) != shape:
                raise DataFormatError(
                    f"{paths[key]}: {key} is {tuple(value.shape[-2:])} (H, W) "
                    f"but its image {img_p} is {shape}"
                )
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_raw(index)
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
        """Random scale (image bilinear, labels nearest), horizontal flip, pad and random crop."""
        h, w = sample["image"].shape[-2:]
        s = rng.uniform(*self.scale)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        out: dict[str, Tensor] = {}
        for key, value in sample.items():
            mode = "bilinear" if key == "image" else "nearest"
            x = value[None].float() if value.ndim == 3 else value[None, None].float()
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            x = F.interpolate(x, size=size, mode=mode, **kwargs)[0]
            if key == "image":
                x = x.round_().clamp_(0, 255)
            out[key] = x.to(value.dtype) if value.ndim == 3 else x[0].to(value.dtype)
        if self.flip and rng.random() < 0.5:
            for key, value in out.items():
                out[key] = flip_normals(value) if key == "normal" else value.flip(-1)
        ch, cw = self.crop
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        top, left = (
            int(rng.integers(0, size[0] + pad_h - ch + 1)),
            int(rng.integers(0, size[1] + pad_w - cw + 1)),
        )
        fills = {"image": 0, "segment_semantic": IGNORE, "normal": IGNORE, "depth_zbuffer": 0}
        for key, value in out.items():
            if pad_h or pad_w:
                pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
                value = F.pad(value, pad, value=fills[key])
            out[key] = value[..., top : top + ch, left : left + cw]
        return out
