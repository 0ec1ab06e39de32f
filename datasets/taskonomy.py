"""Tiny-Taskonomy in the AdaShare/AdapMTL on-disk format (see docs/datasets.md), from any root.

Layout: ``taskonomy.json`` with ``train``/``test`` lists of six relative paths
``[rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture]``; train entries are joined under
``root/train/``, test entries under ``root/test/``; ``semseg_prior_factor.npy`` holds 17 positive float
class weights for the cross-entropy loss (exposed as :attr:`Taskonomy.class_weights`).

Decoding (the reference's formulas) and the target encoding contract every consumer relies on:

- ``input``: 8-bit RGB PNG → RGB/255 normalised with the ImageNet mean/std, as :mod:`mtlprune.datasets.nyuv2`.
- ``segment_semantic``: 8-bit single-channel PNG with values 0..17 → int64 (H, W); 1..17 → classes 0..16,
  0 (unlabeled / uncertain) → 255 = ignore.
- ``normal``: 8-bit RGB PNG → v/255·2 − 1 ∈ [−1, 1], float32 (3, H, W); NaN wherever depth is invalid
  (the reference's normal mask is the depth mask).
- ``depth_zbuffer``: 16-bit PNG in Taskonomy units (1/512 m, 65535 = no hit) → log(1 + d)/log(2¹⁶),
  float32 (1, H, W); NaN where d ≥ 64500 (the reference's mask ``d < 64500``).
- ``keypoints2d`` / ``edge_texture``: 16-bit PNG → v/2¹⁶ clipped to [0, 0.005] / [0, 0.08] and rescaled to
  [−1, 1], float32 (1, H, W).

So: segmentation is int64 with 255 = ignore, and every float target uses NaN for invalid or padded pixels.

Deliberate deviations from the reference loader, for correctness (`standard` protocol, docs/protocols.md):
- unlabeled segmentation pixels (file value 0) are ignored (255); the reference merges them into class 0
  ("background"), which trains and scores the model on pixels nobody labelled;
- maps are kept at their native resolution; the reference resizes everything, the RGB input included, to
  256×256 with nearest neighbour, and its test split further to 224×224 (``protocol="adapmtl"`` does both,
  with OpenCV's arithmetic: the float RGB is not rounded; mtlprune.datasets.cvresize);
- training scales round the scaled size (``round(h·s)``) and the scaled RGB to integers; the reference
  truncates (``int(h·s)``) and keeps the float RGB (both kept under ``protocol="adapmtl"``);
- the input is RGB in [0, 1] normalised with the ImageNet mean/std instead of BGR 0–255 minus the Caffe mean;
- a file that fails to load raises :class:`DataFormatError` naming it; the reference silently substitutes
  another sample.

Training augmentation (random scale, horizontal flip that negates normal x, pad and random crop) is a pure
function of (seed, epoch, index), so a resumed run sees the same batches. The test split is returned
unchanged.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mtlprune.datasets.base import (
    RUN_SPLITS,
    AugmentedDataset,
    DataFormatError,
    bomb_error,
    check_pixel_limit,
    listed_files,
)
from mtlprune.datasets.base import read_listing as read_json_listing
from mtlprune.datasets.vocabularies import TASKONOMY
from mtlprune.engine.metrics import (
    CosineNormalMetric,
    L1Metric,
    LogDepthMetric,
    ReferenceDepthMetric,
    ReferenceL1Metric,
    ReferenceNormalMetric,
    ReferenceSegmentationMetric,
    WeightedSegmentationMetric,
)
from mtlprune.engine.tasks import (
    LossFn,
    protocol_loss,
    table_entry,
    taskonomy_l1_loss,
    taskonomy_normal_loss,
    taskonomy_segmentation_loss,
)
from mtlprune.registry import DATASETS

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
REFERENCE_LOAD_SIZE = (256, 256)  # the reference resizes every map to this on loading (adapmtl protocol)

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
    check_pixel_limit(path, data)  # a bomb is refused before Pillow decodes it
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
    except Image.DecompressionBombError:
        raise bomb_error(path, None) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataFormatError(f"{path}: not a readable PNG ({exc})") from None
    if rgb:
        return np.array(arr[..., :3], dtype=np.uint8)  # a writable copy for torch.from_numpy
    if bits == 16:
        return arr.astype(np.uint16)  # mode I (int32) or I;16 (uint16); the header guarantees 0..65535
    return arr.astype(np.uint8, copy=False)


def read_listing(root: Path, split: str) -> list[list[str]]:
    """The entries of one split, each a list of six relative paths; malformed entries fail loudly."""
    return read_json_listing(root, LISTING, split, ENTRY_FIELDS, "AdaShare Tiny-Taskonomy")


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
class Taskonomy(AugmentedDataset):
    """Tiny-Taskonomy (17-class seg, normals, depth, 2-D keypoints, texture edges) in the AdaShare format."""

    tasks = tuple(TASK_CHANNELS)
    task_channels = TASK_CHANNELS
    dataset_label = "Taskonomy"
    listing_name = LISTING
    entry_fields = ENTRY_FIELDS
    # The Tiny split is defined by buildings, not frames: no per-split frame count is published with it.
    expected_counts: ClassVar[dict[str, int]] = {}
    expected_source = (
        "the Tiny split of Taskonomy: 25 train / 5 validation / 5 test buildings, listed by AdaShare's "
        "taskonomy.json; no frame counts are published"
    )
    # The `adapmtl` protocol evaluates on test inputs and labels resized to this (H, W) (reference: 224).
    reference_eval_size = (224, 224)
    vocabulary = TASKONOMY
    # Losses of every protocol: the reference's Taskonomy losses are ours (the `adapmtl` protocol computes
    # them at the head's resolution); segmentation is weighted by the class weights, bound in `losses`.
    LOSSES: ClassVar[dict[str, LossFn]] = {
        "normal": taskonomy_normal_loss,
        "depth_zbuffer": taskonomy_l1_loss,
        "keypoints2d": taskonomy_l1_loss,
        "edge_texture": taskonomy_l1_loss,
    }

    @classmethod
    def losses(
        cls, tasks: tuple[str, ...], protocol: str, class_weights: Tensor | None = None
    ) -> dict[str, LossFn]:
        """Task → loss under ``protocol``; segmentation needs the dataset's ``class_weights`` (a task subset
        without segmentation ignores them, since the loader always carries them)."""
        out: dict[str, LossFn] = {}
        for task in tasks:
            if task == "segment_semantic":
                if class_weights is None:
                    raise ValueError("the taskonomy segment_semantic loss needs the dataset's class_weights")
                out[task] = partial(
                    protocol_loss(taskonomy_segmentation_loss, None, protocol), class_weights=class_weights
                )
                continue
            known = {**cls.LOSSES, "segment_semantic": taskonomy_segmentation_loss}
            table_entry(known, task, "loss", "taskonomy")
            out[task] = protocol_loss(cls.LOSSES[task], None, protocol)
        return out

    @classmethod
    def metric(cls, task: str, protocol: str, class_weights: Tensor | None = None) -> Any:
        """A fresh accumulator for ``task`` under ``protocol``; segmentation needs the ``class_weights`` (17
        classes on real data; their number decides)."""
        if task == "segment_semantic" and class_weights is None:
            raise ValueError("taskonomy segment_semantic metric needs the dataset's class_weights")
        factories: dict[str, Callable[[], Any]] = {
            "segment_semantic": lambda: WeightedSegmentationMetric(class_weights),
            "normal": CosineNormalMetric,
            "depth_zbuffer": LogDepthMetric,
            "keypoints2d": lambda: L1Metric("keypoints2d", "err"),
            "edge_texture": lambda: L1Metric("edge_texture", "err"),
        }
        if protocol == "adapmtl":
            factories = {
                "segment_semantic": lambda: ReferenceSegmentationMetric(
                    torch.as_tensor(class_weights).numel(), class_weights
                ),
                "normal": lambda: ReferenceNormalMetric(encoded=False),
                "depth_zbuffer": lambda: ReferenceDepthMetric(log_units=True),
                "keypoints2d": lambda: ReferenceL1Metric("keypoints2d"),
                "edge_texture": lambda: ReferenceL1Metric("edge_texture"),
            }
        return table_entry(factories, task, "metric", "taskonomy")()

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
        protocol: str = "standard",
    ) -> None:
        # ``protocol`` leaves the flip alone (the reference Taskonomy loader negates normal x too); under
        # `adapmtl` it changes the sizes and the resampling (protocol_frame, scaled_size).
        super().__init__(tasks, augment, crop, scale, flip, seed, protocol)
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown Taskonomy split {split!r}; allowed: {list(SPLIT_DIRS)}")
        self.root = Path(root)
        self.split = split
        self.split_root = self.root / SPLIT_DIRS[split]
        self.entries = read_listing(self.root, split)
        self.class_weights: Tensor = read_prior_factor(self.root)

    @staticmethod
    def data_files(root: str | Path) -> list[str]:
        """Every file a run reads, relative to ``root``: the listing, the prior factors, and the files of
        the train and test entries under ``train/`` and ``test/`` (what the content fingerprint hashes)."""
        split_dirs = {split: SPLIT_DIRS[split] for split in RUN_SPLITS}
        files = listed_files(Path(root), LISTING, split_dirs, ENTRY_FIELDS, "AdaShare Tiny-Taskonomy")
        return sorted({*files, PRIOR_FACTOR})

    @staticmethod
    def synthesize(out: Path, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
        from mtlprune.datasets.synthetic import write_taskonomy

        return write_taskonomy(out, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed)

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

    def protocol_frame(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under ``adapmtl`` every split as the reference reads it: the RGB as float32 and every map resized
        to 256×256 with INTER_NEAREST (``taskonomy_dataloader_adashare.py:239-251``); the test split then
        further to 224×224, the float image INTER_LINEAR without rounding, the labels INTER_NEAREST
        (``:112-126``)."""
        if self.protocol != "adapmtl":
            return sample
        frame = {**sample, "image": sample["image"].float()}
        sample = self.reference_resize(frame, REFERENCE_LOAD_SIZE, linear_image=False)
        if self.split != "train" and not self.augment:
            sample = self.reference_resize(sample, self.reference_eval_size)
        return sample

    def flip_target(self, key: str, value: Tensor) -> Tensor:
        """Mirror a map; normals also negate x (the reference does too)."""
        value = value.flip(-1)
        return torch.cat([-value[:1], value[1:]], dim=0) if key == "normal" else value

    def pad_fill(self, key: str) -> float:
        """Float targets pad with NaN (invalid), segmentation with 255 (ignore)."""
        return float("nan") if key in FLOAT_TASKS else float(IGNORE)
