"""NYU-v2 in the AdaShare/AdapMTL on-disk format (see docs/datasets.md), read from any root.

Layout: ``nyu_v2_3task.json`` with ``train``/``test`` lists of ``[img png, seg png, normal png, depth npy]``
paths relative to the root; RGB PNG; seg uint8 0..39 with 255 = ignore; normals uint8 (n+1)·127.5 with
(255,255,255) invalid; depth float32 metres (0 = invalid).

Deliberate deviations from the reference loader, for correctness (`standard` protocol, docs/protocols.md):
- the horizontal flip negates the normal x component (v → 255 − v on valid pixels); the reference does not
  (``protocol="adapmtl"`` keeps the reference's un-negated flip);
- the test split is returned at its native resolution, unchanged; the reference resizes it to 321×321
  (``protocol="adapmtl"`` does too, with OpenCV's uint8 arithmetic: mtlprune.datasets.cvresize);
- training scales round the scaled size (``round(h·s)``); the reference truncates (``int(h·s)``, kept
  under ``protocol="adapmtl"``, which also resizes with OpenCV's arithmetic);
- the input is RGB scaled to [0, 1] and normalised with the ImageNet mean/std (what torchvision weights
  expect) instead of BGR 0–255 minus the Caffe mean.

Training augmentation is a pure function of (seed, epoch, index), so a resumed run sees the same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mtlprune.datasets.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RUN_SPLITS,
    AugmentedDataset,
    DataFormatError,
    bomb_error,
    check_pixel_limit,
    listed_files,
)
from mtlprune.datasets.base import read_listing as read_json_listing
from mtlprune.datasets.vocabularies import NYUV2
from mtlprune.engine.metrics import (
    DepthMetric,
    NormalMetric,
    ReferenceDepthMetric,
    ReferenceNormalMetric,
    ReferenceSegmentationMetric,
    SegmentationMetric,
)
from mtlprune.engine.tasks import (
    LossFn,
    depth_loss,
    normal_loss,
    protocol_loss,
    reference_depth_loss,
    reference_normal_loss,
    segmentation_loss,
    table_entry,
)
from mtlprune.registry import DATASETS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LISTING",
    "DataFormatError",
    "NYUv2",
    "flip_normals",
    "read_listing",
]

LISTING = "nyu_v2_3task.json"
TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
IGNORE = 255
ENTRY_FIELDS = ("img png", "seg png", "normal png", "depth npy")


def _read_png(path: Path, channels: int) -> np.ndarray:
    try:
        with path.open("rb") as fh:
            check_pixel_limit(path, fh.read(24))  # a bomb is refused before Pillow decodes it
            fh.seek(0)
            with Image.open(fh) as img:
                img.load()
                arr = np.asarray(img)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file listed in {LISTING} does not exist") from None
    except Image.DecompressionBombError:  # not a PNG header, but Pillow read a size over twice its limit
        raise bomb_error(path, None) from None
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
    """The entries of one split: four relative paths each; malformed listings fail loudly."""
    return read_json_listing(root, LISTING, split, ENTRY_FIELDS, "AdaShare NYU-v2")


def flip_normals(normal: Tensor) -> Tensor:
    """Mirror encoded normals horizontally: negate x (v → 255 − v) except at invalid (255,255,255) pixels."""
    flipped = normal.flip(-1)
    invalid = (flipped == IGNORE).all(dim=0)
    x = torch.where(invalid, flipped[0], 255 - flipped[0])
    return torch.cat([x[None], flipped[1:]], dim=0)


@DATASETS.register("nyuv2")
class NYUv2(AugmentedDataset):
    """NYU-v2 (40-class segmentation, surface normals, depth) in the AdaShare format."""

    tasks = tuple(TASK_CHANNELS)
    task_channels = TASK_CHANNELS
    dataset_label = "NYU-v2"
    listing_name = LISTING
    entry_fields = ENTRY_FIELDS
    # The standard split of NYU Depth V2's 1449 labelled frames, as AdaShare's formatted release lists it.
    expected_counts: ClassVar[dict[str, int]] = {"train": 795, "test": 654}
    expected_source = "the 795/654 split of NYU Depth V2 in AdaShare's formatted NYU-v2"
    # The `adapmtl` protocol evaluates on test inputs and labels resized straight to this (H, W).
    reference_eval_size = (321, 321)
    vocabulary = NYUV2
    # The training losses of docs/protocols.md; under `adapmtl` the reference's normal and depth losses
    # replace ours (at the head's resolution, mtlprune.engine.tasks.protocol_loss).
    LOSSES: ClassVar[dict[str, LossFn]] = {
        "segment_semantic": segmentation_loss,
        "normal": normal_loss,
        "depth_zbuffer": depth_loss,
    }
    REFERENCE_LOSSES: ClassVar[dict[str, LossFn]] = {
        "normal": reference_normal_loss,
        "depth_zbuffer": reference_depth_loss,
    }
    METRICS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {
            "segment_semantic": SegmentationMetric,
            "normal": NormalMetric,
            "depth_zbuffer": DepthMetric,
        },
        "adapmtl": {
            "segment_semantic": lambda: ReferenceSegmentationMetric(40),
            "normal": lambda: ReferenceNormalMetric(encoded=True),
            "depth_zbuffer": lambda: ReferenceDepthMetric(log_units=False),
        },
    }

    @classmethod
    def losses(
        cls, tasks: tuple[str, ...], protocol: str, class_weights: Tensor | None = None
    ) -> dict[str, LossFn]:
        """Task → loss under ``protocol`` (the engine's make_losses asks here)."""
        if class_weights is not None:
            raise ValueError("class_weights were given but no loss of dataset 'nyuv2' uses them")
        return {
            task: protocol_loss(
                table_entry(cls.LOSSES, task, "loss", "nyuv2"), cls.REFERENCE_LOSSES.get(task), protocol
            )
            for task in tasks
        }

    @classmethod
    def metric(cls, task: str, protocol: str, class_weights: Tensor | None = None) -> Any:
        """A fresh accumulator for ``task`` under ``protocol`` (the engine's make_metric asks here)."""
        if class_weights is not None:
            raise ValueError("nyuv2 metrics take no class_weights")
        return table_entry(cls.METRICS[protocol], task, "metric", "nyuv2")()

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
        protocol: str = "standard",
    ) -> None:
        super().__init__(tasks, augment, crop, scale, flip, seed, protocol)
        # The reference flips NYU-v2 normals without negating x; only the adapmtl protocol keeps that.
        self.negate_normal_x = protocol != "adapmtl"
        self.root = Path(root)
        self.split = split
        self.entries = read_listing(self.root, split)

    @staticmethod
    def data_files(root: str | Path) -> list[str]:
        """Every file a run reads, relative to ``root``: the listing and the files of its train and test
        entries (what the data's content fingerprint hashes)."""
        split_dirs = dict.fromkeys(RUN_SPLITS, "")
        return listed_files(Path(root), LISTING, split_dirs, ENTRY_FIELDS, "AdaShare NYU-v2")

    @staticmethod
    def synthesize(out: Path, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
        from mtlprune.datasets.synthetic import write_nyuv2

        return write_nyuv2(out, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed)

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

    def protocol_frame(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under ``adapmtl`` the test split at the reference's 321×321: the uint8 image resized with OpenCV's
        INTER_LINEAR fixed-point arithmetic and rounding (as ``cv2.resize`` before the mean is subtracted),
        every label map INTER_NEAREST (reference ``nyuv2_dataloader_adashare.py:91-101``)."""
        if self.protocol == "adapmtl" and self.split != "train" and not self.augment:
            return self.reference_resize(sample, self.reference_eval_size)
        return sample

    def flip_target(self, key: str, value: Tensor) -> Tensor:
        """Mirror a map; normals also negate x (v → 255 − v) unless the adapmtl protocol asks otherwise."""
        if key == "normal" and self.negate_normal_x:
            return flip_normals(value)
        return value.flip(-1)

    def pad_fill(self, key: str) -> float:
        """Labels and normals pad with 255 (ignore / invalid), depth with 0 (invalid)."""
        return 0 if key == "depth_zbuffer" else IGNORE
