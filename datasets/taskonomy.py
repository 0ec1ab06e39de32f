"""Tiny-Taskonomy in the AdaShare/AdapMTL on-disk format (adapmtl.md §3.2, disparse.md §4.3), from any root.

Layout: ``taskonomy.json`` with ``train``/``test`` lists of six relative paths
``[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture]``; train entries are joined under
``root/train/``, test entries under ``root/test/``; ``semseg_prior_factor.npy`` holds 17 positive float
class weights for the cross-entropy loss (exposed as :attr:`Taskonomy.class_weights`).

Decoding (the reference's formulas) and the target encoding contract every consumer relies on:

- ``input``: 8-bit RGB PNG → RGB/255 normalised with the ImageNet mean/std, exactly as :mod:`datasets.nyuv2`.
- ``segment_semantic``: 8-bit single-channel PNG with values 0..17 → int64 (H, W); 1..17 → classes 0..16,
  0 (unlabeled / uncertain) → 255 = ignore.
- ``normal``: 8-bit RGB PNG → v/255·2 − 1 ∈ [−1, 1], float32 (3, H, W); NaN wherever depth is invalid
  (the reference's normal mask is the depth mask).
- ``depth_zbuffer``: 16-bit PNG in Taskonomy units (1/512 m, 65535 = no hit) → log(1 + d)/log(2¹⁶),
  float32 (1, H, W); NaN where d ≥ 64500 (the reference's mask ``d < 64500``).
- ``keypoints2d`` / ``edge_texture``: 16-bit PNG → v/2¹⁶ clipped to [0, 0.005] / [0, 0.08] and rescaled to
  [−1, 1], float32 (1, H, W).

So: segmentation is int64 with 255 = ignore, and every float target uses NaN for invalid or padded pixels.

Deliberate deviations from the reference loader, all in favour of correctness (DESIGN `standard` protocol):
- unlabeled segmentation pixels (file value 0) are ignored (255); the reference merges them into class 0
  ("background", adapmtl.md §3.2 and §7.16), which trains and scores the model on pixels nobody labelled;
- maps are kept at their native resolution; the reference resizes everything, the RGB input included, to
  256×256 with nearest neighbour, and its test split further to 224×224;
- the input is RGB in [0, 1] normalised with the ImageNet mean/std instead of BGR 0–255 minus the Caffe mean;
- a file that fails to load raises :class:`DataFormatError` naming it; the reference silently substitutes
  another sample.

Training augmentation (random scale, horizontal flip that negates normal x, pad and random crop) is a pure
function of (seed, epoch, index), so a resumed run sees the same batches. The test split is returned
unchanged.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from bench.registry import DATASETS
from datasets.nyuv2 import IMAGENET_MEAN, IMAGENET_STD, DataFormatError

LISTING = "taskonomy.json"
PRIOR_FACTOR = "semseg_prior_factor.npy"
TASK_CHANNELS = {"segment_semantic": 17, "normal": 3, "depth_zbuffer": 1, "keypoints2d": 1, "edge_texture": 1}
ENTRY_FIELDS = ("rgb", *TASK_CHANNELS)  # order of the six paths of a listing entry
SPLIT_DIRS = {"train": "train", "test": "test", "test_small": "test"}  # listing key → directory under root
N_CLASSES = 17
IGNORE = 255
DEPTH_INVALID_FROM = 64500  # raw depth values at or above this are invalid (reference mask d < 64500)
DEPTH_LOG_NORM = math.log(2**16)
KEYPOINT_CLIP = 0.005
EDGE_CLIP = 0.08
FLOAT_TASKS = frozenset({"normal", "depth_zbuffer", "keypoints2d", "edge_texture"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # chunk type plus its (constant) CRC: present in every complete PNG
_PNG_COLOUR = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


def _read_png(path: Path, bits: int, rgb: bool) -> np.ndarray:
    """Decode one PNG, checking bit depth and colour type from its header (PIL may hide both).

    Pillow opens 16-bit greyscale as mode ``I;16`` or ``I`` depending on the version, and pads truncated
    files when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set globally; reading the header and looking for the
    IEND chunk makes the checks independent of both.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file listed in {LISTING} does not exist") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc})") from None
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise DataFormatError(f"{path}: not a readable PNG (no PNG signature and IHDR header)")
    if data.rfind(_PNG_IEND) < 0:
        raise DataFormatError(f"{path}: not a readable PNG (truncated: no IEND chunk)")
    depth, colour = data[24], data[25]
    allowed = (2, 6) if rgb else (0,)
    if depth != bits or colour not in allowed:
        want = "RGB" if rgb else "single-channel"
        got = _PNG_COLOUR.get(colour, str(colour))
        raise DataFormatError(
            f"{path}: expected a {bits}-bit {want} PNG, found bit depth {depth}, colour type {got}"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataFormatError(f"{path}: not a readable PNG ({exc})") from None
    if rgb:
        return np.array(arr[..., :3], dtype=np.uint8)  # a writable copy for torch.from_numpy
    if bits == 16:
        return arr.astype(np.uint16)  # mode I (int32) or I;16 (uint16); the header guarantees 0..65535
    return arr.astype(np.uint8, copy=False)


def read_listing(root: Path, split: str) -> list[list[str]]:
    """The entries of one split, each a list of six relative paths; malformed entries fail loudly."""
    listing = root / LISTING
    if not listing.is_file():
        raise DataFormatError(
            f"{listing}: listing not found (expected the AdaShare Tiny-Taskonomy layout under {root})"
        )
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{listing}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(f"{listing}: expected a key {split!r} holding a list of samples; found {keys}")
    entries = data[split]
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{listing}: {split!r} must be a non-empty list of samples")
    for i, entry in enumerate(entries):
        ok = (
            isinstance(entry, list)
            and len(entry) == len(ENTRY_FIELDS)
            and all(isinstance(p, str) and p and not Path(p).is_absolute() for p in entry)
        )
        if not ok:
            raise DataFormatError(
                f"{listing}: {split}[{i}] must be a list of {len(ENTRY_FIELDS)} relative paths "
                f"[{', '.join(ENTRY_FIELDS)}], got {entry!r}"
            )
    return entries


def read_prior_factor(root: Path) -> Tensor:
    """The 17 CE class weights; anything but 17 finite positive floats is a format error."""
    path = root / PRIOR_FACTOR
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: prior-factor file not found (17 class weights expected)") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.shape != (N_CLASSES,) or not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(
            f"{path}: expected a float array of shape ({N_CLASSES},), got {arr.dtype} {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise DataFormatError(f"{path}: class weights must be finite and > 0, got {arr.tolist()}")
    return torch.from_numpy(arr.astype(np.float32))


def decode_seg(raw: np.ndarray, path: Path) -> Tensor:
    """File values 1..17 → classes 0..16; 0 (unlabeled) → 255; anything above 17 is a format error."""
    bad = raw > N_CLASSES
    if bad.any():
        found = sorted(set(raw[bad].tolist()))[:5]
        raise DataFormatError(f"{path}: segment labels must be 0..{N_CLASSES}, found {found}")
    seg = raw.astype(np.int64) - 1
    seg[raw == 0] = IGNORE
    return torch.from_numpy(seg)


def decode_depth(raw: np.ndarray) -> Tensor:
    """Taskonomy units → log(1 + d)/log(2¹⁶) as float32 (1, H, W), NaN where d ≥ 64500."""
    d = raw.astype(np.float64)
    out = np.log1p(d) / DEPTH_LOG_NORM
    out[raw >= DEPTH_INVALID_FROM] = np.nan
    return torch.from_numpy(out.astype(np.float32))[None]


def decode_clipped(raw: np.ndarray, clip: float) -> Tensor:
    """16-bit map → v/2¹⁶ clipped to [0, clip] and rescaled to [−1, 1], float32 (1, H, W)."""
    x = np.clip(raw.astype(np.float64) / 2**16, 0.0, clip) / clip * 2.0 - 1.0
    return torch.from_numpy(x.astype(np.float32))[None]


def decode_normal(raw: np.ndarray, depth_valid: np.ndarray) -> Tensor:
    """8-bit RGB → v/255·2 − 1 in (3, H, W) float32, NaN where depth is invalid."""
    n = raw.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    n[~depth_valid] = np.nan
    return torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))


@DATASETS.register("taskonomy")
class Taskonomy(Dataset):
    """Tiny-Taskonomy (17-class seg, normals, depth, 2-D keypoints, texture edges) in the AdaShare format."""

    tasks = tuple(TASK_CHANNELS)
    task_channels = TASK_CHANNELS
    listing_name = LISTING

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: tuple[str, ...] | list[str] = tuple(TASK_CHANNELS),
        augment: bool = False,
        crop: tuple[int, int] = (224, 224),
        scale: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown Taskonomy split {split!r}; allowed: {list(SPLIT_DIRS)}")
        self.split = split
        self.split_root = self.root / SPLIT_DIRS[split]
        self.entries = read_listing(self.root, split)
        unknown = [t for t in tasks if t not in TASK_CHANNELS]
        if unknown:
            raise ValueError(f"unknown Taskonomy task(s) {unknown}; allowed: {list(TASK_CHANNELS)}")
        self.tasks_used = tuple(tasks)
        self.class_weights: Tensor = read_prior_factor(self.root)
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
        from datasets.synthetic import write_taskonomy

        return write_taskonomy(out, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index) only."""
        self.epoch = epoch

    def paths(self, index: int) -> dict[str, Path]:
        """Absolute paths of one sample's six files, keyed by ``rgb`` and the task names."""
        return {
            field: self.split_root / p for field, p in zip(ENTRY_FIELDS, self.entries[index], strict=True)
        }

    def load_raw(self, index: int) -> dict[str, Tensor]:
        """Decoded, unaugmented sample: image uint8 (3,H,W) plus the used targets in the contract encoding."""
        paths = self.paths(index)
        image = _read_png(paths["rgb"], 8, rgb=True)
        shape = image.shape[:2]
        raw: dict[str, np.ndarray] = {}
        needed = set(self.tasks_used) | ({"depth_zbuffer"} if "normal" in self.tasks_used else set())
        for task in TASK_CHANNELS:  # fixed order: errors are reported deterministically
            if task not in needed:
                continue
            raw[task] = _read_png(
                paths[task], 8 if task in ("segment_semantic", "normal") else 16, task == "normal"
            )
            if raw[task].shape[:2] != shape:
                raise DataFormatError(
                    f"{paths[task]}: {task} is {raw[task].shape[:2]} (H, W) "
                    f"but its image {paths['rgb']} is {shape}"
                )
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous()}
        if "segment_semantic" in self.tasks_used:
            sample["segment_semantic"] = decode_seg(raw["segment_semantic"], paths["segment_semantic"])
        if "normal" in self.tasks_used:
            sample["normal"] = decode_normal(raw["normal"], raw["depth_zbuffer"] < DEPTH_INVALID_FROM)
        if "depth_zbuffer" in self.tasks_used:
            sample["depth_zbuffer"] = decode_depth(raw["depth_zbuffer"])
        if "keypoints2d" in self.tasks_used:
            sample["keypoints2d"] = decode_clipped(raw["keypoints2d"], KEYPOINT_CLIP)
        if "edge_texture" in self.tasks_used:
            sample["edge_texture"] = decode_clipped(raw["edge_texture"], EDGE_CLIP)
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
        """Random scale (image bilinear, labels nearest), horizontal flip, pad and random crop.

        Same draws in the same order as the NYU-v2 loader. Nearest resampling keeps NaN and 255 exact.
        """
        h, w = sample["image"].shape[-2:]
        s = rng.uniform(*self.scale)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        out: dict[str, Tensor] = {}
        for key, value in sample.items():
            x = value[None].float() if value.ndim == 3 else value[None, None].float()
            if key == "image":
                x = (
                    F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
                    .round_()
                    .clamp_(0, 255)
                )
            else:
                x = F.interpolate(x, size=size, mode="nearest")[0]
            out[key] = x.to(value.dtype) if value.ndim == 3 else x[0].to(value.dtype)
        if self.flip and rng.random() < 0.5:
            for key, value in out.items():
                value = value.flip(-1)
                if key == "normal":
                    value = torch.cat([-value[:1], value[1:]], dim=0)
                out[key] = value
        ch, cw = self.crop
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        top, left = (
            int(rng.integers(0, size[0] + pad_h - ch + 1)),
            int(rng.integers(0, size[1] + pad_w - cw + 1)),
        )
        for key, value in out.items():
            if pad_h or pad_w:
                fill = 0.0 if key == "image" else (float("nan") if key in FLOAT_TASKS else float(IGNORE))
                pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
                value = F.pad(value, pad, value=fill)
            out[key] = value[..., top : top + ch, left : left + cw]
        return out
