"""The NYU-v2 loader on real AdaShare samples and on synthetic output; loud errors on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mtlprune.datasets.nyuv2 import IMAGENET_MEAN, IMAGENET_STD, DataFormatError, NYUv2, flip_normals

TASKS = ("segment_semantic", "normal", "depth_zbuffer")


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    return ((x * IMAGENET_STD + IMAGENET_MEAN) * 255).round()


def test_real_samples_load_at_native_resolution(real_nyuv2_root):
    test = NYUv2(real_nyuv2_root, "test", TASKS)
    sample = test[0]
    assert sample["input"].shape == (3, 480, 640) and sample["input"].dtype == torch.float32
    assert sample["segment_semantic"].shape == (480, 640) and sample["segment_semantic"].dtype == torch.int64
    assert sample["normal"].shape == (3, 480, 640) and sample["normal"].dtype == torch.uint8
    assert sample["depth_zbuffer"].shape == (1, 480, 640)
    seg = sample["segment_semantic"]
    assert set(seg.unique().tolist()) <= set(range(40)) | {255}
    # Valid normals decode to (nearly) unit vectors, as the reference notes report (mean norm ~0.99).
    valid = ~(sample["normal"] == 255).all(dim=0)
    norms = (sample["normal"].float() / 127.5 - 1).norm(dim=0)[valid]
    assert 0.95 < float(norms.mean()) < 1.02
    depth = sample["depth_zbuffer"][0]
    assert float(depth.min()) > 0 and float(depth.max()) < 10
    # The test split is untouched: the input is exactly the stored RGB image, normalised.
    stored = np.array(Image.open(real_nyuv2_root / test.entries[0][0]))
    assert torch.equal(
        _denormalise(sample["input"]).to(torch.uint8), torch.from_numpy(stored).permute(2, 0, 1)
    )


def test_real_samples_train_augmentation_crops_and_is_seeded(real_nyuv2_root):
    train = NYUv2(real_nyuv2_root, "train", TASKS, augment=True, crop=(321, 321), seed=3)
    a, b = train[1], train[1]
    assert a["input"].shape == (3, 321, 321) and a["segment_semantic"].shape == (321, 321)
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["normal"], b["normal"])
    train.set_epoch(1)
    assert not torch.equal(train[1]["input"], a["input"])


def test_flip_negates_normal_x_and_keeps_invalid():
    normal = torch.tensor([[[200, 10, 255]], [[100, 20, 255]], [[50, 30, 255]]], dtype=torch.uint8)  # (3,1,3)
    flipped = flip_normals(normal)
    # Pixel order reverses; x → 255 − x on valid pixels; the invalid (255,255,255) pixel stays invalid.
    assert flipped[:, 0, 0].tolist() == [255, 255, 255]
    assert flipped[:, 0, 1].tolist() == [245, 20, 30]
    assert flipped[:, 0, 2].tolist() == [55, 100, 50]


def test_synthetic_root_reads_through_the_same_loader(synthetic_root):
    train = NYUv2(synthetic_root, "train", TASKS, augment=True, crop=(24, 24), seed=0)
    test = NYUv2(synthetic_root, "test", TASKS)
    assert len(train) == 8 and len(test) == 4
    assert train[0]["input"].shape == (3, 24, 24)
    assert test[0]["input"].shape == (3, 32, 40)


def test_task_subset_only_returns_those_targets(synthetic_root):
    two = NYUv2(synthetic_root, "test", ("segment_semantic", "normal"))
    assert set(two[0]) == {"input", "name", "segment_semantic", "normal"}


def test_missing_file_is_named(synthetic_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    first = json.loads((root / "nyu_v2_3task.json").read_text())["test"][0]
    (root / first[2]).unlink()
    with pytest.raises(DataFormatError, match=first[2].replace(".", r"\.") + ".*does not exist"):
        NYUv2(root, "test", TASKS)[0]


def test_corrupt_png_and_bad_labels_are_named(synthetic_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    entry = json.loads((root / "nyu_v2_3task.json").read_text())["test"][0]
    (root / entry[0]).write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="not a readable PNG"):
        NYUv2(root, "test", TASKS)[0]
    entry = json.loads((root / "nyu_v2_3task.json").read_text())["test"][1]
    seg = np.asarray(Image.open(root / entry[1])).copy()
    seg[0, 0] = 77
    Image.fromarray(seg).save(root / entry[1])
    with pytest.raises(DataFormatError, match=r"class ids must be 0\.\.39 or 255, found \[77\]"):
        NYUv2(root, "test", TASKS)[1]


def test_bad_listing_is_named(tmp_path):
    with pytest.raises(DataFormatError, match="nyu_v2_3task.json: listing not found"):
        NYUv2(tmp_path, "train")
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": [["a.png", "b.png"]]}))
    with pytest.raises(
        DataFormatError,
        match=r"train\[0\] must be a list of 4 relative paths \[img png, seg png, normal png, depth npy\]",
    ):
        NYUv2(tmp_path, "train")
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": [["/abs/a.png", "b", "c", "d"]]}))
    with pytest.raises(DataFormatError, match=r"train\[0\] must be a list of 4 relative paths"):
        NYUv2(tmp_path, "train")
    with pytest.raises(DataFormatError, match="expected a key 'test'"):
        NYUv2(tmp_path, "test")
