"""`data verify` and the loader refuse bad NYU-v2 input loudly, naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlprune.cli import main
from mtlprune.datasets.nyuv2 import DataFormatError, NYUv2
from mtlprune.datasets.verify import verify


def test_real_samples_verify_clean(real_nyuv2_root, capsys):
    report = verify("nyuv2", real_nyuv2_root)
    assert report.ok, report.problems
    assert report.counts == {"train": 3, "test": 1}
    assert report.sizes == {(480, 640): 4}
    assert set(report.class_histogram) <= set(range(40)) | {255}
    assert sum(report.class_histogram.values()) == 4 * 480 * 640
    assert main(["data", "verify", "--dataset", "nyuv2", "--root", str(real_nyuv2_root)]) == 0
    assert "3 train, 1 test" in capsys.readouterr().out


def test_synthetic_output_verifies_clean(synthetic_root):
    report = verify("nyuv2", synthetic_root)
    assert report.ok and report.counts == {"train": 8, "test": 4}


def _corrupt(root: Path, what: str) -> tuple[str, str]:
    """Break one file in one way; return (file that must be named, words that must appear)."""
    listing = json.loads((root / "nyu_v2_3task.json").read_text())
    img, seg, normal, depth = listing["train"][1]
    if what == "missing":
        (root / normal).unlink()
        return normal, "does not exist"
    if what == "truncated":
        data = (root / img).read_bytes()
        (root / img).write_bytes(data[: len(data) // 2])
        return img, "not a readable PNG"
    if what == "size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / seg)
        return seg, "(10, 12) (H, W) but its image"
    if what == "label":
        arr = np.array(Image.open(root / seg))
        arr[0, 0] = 40
        Image.fromarray(arr).save(root / seg)
        return seg, "class ids must be 0..39 or 255, found [40]"
    if what == "nan_depth":
        arr = np.load(root / depth)
        arr[0, 0] = np.nan
        np.save(root / depth, arr)
        return depth, "depth must be finite and >= 0"
    if what == "negative_depth":
        arr = np.load(root / depth)
        arr[3, 3] = -1.0
        np.save(root / depth, arr)
        return depth, "1 pixels are NaN, inf or negative"
    if what == "16bit_image":
        Image.fromarray(np.zeros((32, 40), np.uint16)).save(root / img)
        return img, "expected an 8-bit image"
    raise AssertionError(what)


CASES = ["missing", "truncated", "size", "label", "nan_depth", "negative_depth", "16bit_image"]


@pytest.mark.parametrize("what", CASES)
def test_each_bad_file_is_named_by_loader_and_verify(synthetic_root, tmp_path, what, capsys):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    name, words = _corrupt(root, what)
    with pytest.raises(DataFormatError) as info:
        NYUv2(root, "train").load_raw(1)
    assert name in str(info.value) and words in str(info.value)
    report = verify("nyuv2", root)
    assert len(report.problems) == 1 and name in report.problems[0] and words in report.problems[0]
    assert main(["data", "verify", "--dataset", "nyuv2", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and name in out


def test_every_problem_is_listed_not_just_the_first(synthetic_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    listing = json.loads((root / "nyu_v2_3task.json").read_text())
    for entry in listing["train"][:3] + listing["test"][:1]:
        (root / entry[3]).unlink()
    report = verify("nyuv2", root)
    assert len(report.problems) == 4 and all("does not exist" in p for p in report.problems)
    assert report.counts == {"train": 8, "test": 4}


def test_malformed_listing_entry_is_named(synthetic_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(synthetic_root, root)
    listing = json.loads((root / "nyu_v2_3task.json").read_text())
    listing["test"][2] = listing["test"][2][:3]
    (root / "nyu_v2_3task.json").write_text(json.dumps(listing))
    report = verify("nyuv2", root)
    assert len(report.problems) == 1
    assert (
        "nyu_v2_3task.json: test[2] must be a list of 4 relative paths "
        "[img png, seg png, normal png, depth npy]" in report.problems[0]
    )
    (root / "nyu_v2_3task.json").write_text("{not json")
    assert "cannot read the listing" in verify("nyuv2", root).problems[0]
