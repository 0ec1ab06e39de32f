"""The Tiny-Taskonomy writer and loader: exact round trips, the target encoding contract, seeded
augmentation, and loud errors (naming the file and the problem) on every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlprune.datasets.nyuv2 import IMAGENET_MEAN, IMAGENET_STD, DataFormatError
from mtlprune.datasets.synthetic import frame_rng, render_frame, write_nyuv2, write_taskonomy
from mtlprune.datasets.taskonomy import TASK_CHANNELS, Taskonomy
from mtlprune.registry import DATASETS

H, W, SEED = 32, 40, 5
N = {"train": 6, "test": 3}
TASKS = tuple(TASK_CHANNELS)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality with NaN == NaN (the float targets carry NaN for invalid pixels)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_taskonomy(
        tmp_path_factory.mktemp("tk") / "tiny",
        n_train=N["train"],
        n_test=N["test"],
        height=H,
        width=W,
        seed=SEED,
    )


@pytest.fixture()
def copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of the root that a test may damage."""
    return Path(shutil.copytree(root, tmp_path / "tiny"))


def _raises(path: Path, problem: str):
    """pytest.raises for a DataFormatError whose message names ``path`` and then the problem."""
    return pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*" + problem)


# ------------------------------------------------------------------------------------------- round trips


def test_layout_and_registration(root: Path) -> None:
    listing = json.loads((root / "taskonomy.json").read_text())
    assert [len(listing[s]) for s in ("train", "test")] == [6, 3]
    assert listing["test"][0][3] == "synth/depth_zbuffer/point_6_view_0_domain_depth_zbuffer.png"
    assert all((root / split / p).is_file() for split in N for entry in listing[split] for p in entry)
    assert DATASETS.get("taskonomy") is Taskonomy
    assert Taskonomy.task_channels == {
        "segment_semantic": 17,
        "normal": 3,
        "depth_zbuffer": 1,
        "keypoints2d": 1,
        "edge_texture": 1,
    }


@pytest.mark.parametrize("split", ["train", "test"])
def test_depth_normals_and_seg_round_trip_to_the_renderer(root: Path, split: str) -> None:
    ds = Taskonomy(root, split)
    invalid_seen = 0
    for j in range(N[split]):
        frame = render_frame(frame_rng(SEED, split, j), H, W)
        sample = ds[j]
        raw = np.asarray(Image.open(ds.paths(j)["depth_zbuffer"]))
        depth = sample["depth_zbuffer"][0].numpy()
        assert sample["depth_zbuffer"].shape == (1, H, W) and depth.dtype == np.float32
        nan = np.isnan(depth)
        assert np.array_equal(nan, raw == 65535)
        assert np.array_equal(nan, np.isnan(frame.normal).any(axis=-1))  # depth mask = renderer's normal mask
        expected = np.log1p(np.round(frame.depth.astype(np.float64) * 512)) / math.log(65536)
        assert np.abs(depth[~nan] - expected[~nan]).max() < 1e-6
        invalid_seen += int(nan.sum())
        normal = sample["normal"].numpy()
        assert normal.shape == (3, H, W) and normal.dtype == np.float32
        assert np.array_equal(np.isnan(normal).any(axis=0), nan) and np.isnan(normal).all(axis=0)[nan].all()
        assert np.abs(np.linalg.norm(normal[:, ~nan], axis=0) - 1).max() < 0.02
        assert np.abs(normal[:, ~nan].T - frame.normal[~nan]).max() < 1.5 / 255  # camera axes, no remap
        seg = sample["segment_semantic"]
        assert seg.dtype == torch.int64 and seg.shape == (H, W)
        assert set(seg.unique().tolist()) <= set(range(17)) | {255}
        assert np.array_equal(seg.numpy() == 255, frame.seg == 255)  # unlabeled is ignored, not class 0
    if split == "train":
        assert invalid_seen > 0  # the fixture exercises the invalid-depth path


def test_same_rooms_as_the_nyu_writer(root: Path, tmp_path: Path) -> None:
    nyu = write_nyuv2(tmp_path / "nyu", n_train=2, n_test=1, height=H, width=W, seed=SEED)
    entries = json.loads((nyu / "nyu_v2_3task.json").read_text())
    ds = Taskonomy(root, "test", ("depth_zbuffer",))
    nyu_depth = np.load(nyu / entries["test"][0][3])
    raw = np.asarray(Image.open(ds.paths(0)["depth_zbuffer"])).astype(np.float64)
    valid = raw != 65535
    assert np.array_equal(raw[valid], np.round(nyu_depth.astype(np.float64) * 512)[valid])


def test_keypoints_edges_and_prior_factor(root: Path) -> None:
    ds = Taskonomy(root, "train")
    for j in range(len(ds)):
        sample = ds[j]
        for task in ("keypoints2d", "edge_texture"):
            x = sample[task]
            assert x.shape == (1, H, W) and x.dtype == torch.float32
            assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.max()) > float(x.min())
        assert float((sample["keypoints2d"] == -1).float().mean()) > 0.5  # most pixels carry no corner
    weights = ds.class_weights
    assert weights.shape == (17,) and weights.dtype == torch.float32 and bool((weights > 0).all())
    assert torch.equal(weights, torch.from_numpy(np.load(root / "semseg_prior_factor.npy")))
    assert int(weights.argmin()) == 0  # background is the most frequent class, so the lightest


def test_test_split_is_native_and_unchanged(root: Path) -> None:
    ds = Taskonomy(root, "test")
    sample = ds[1]
    assert sample["input"].shape == (3, H, W) and sample["name"] == ds.entries[1][0]
    stored = torch.from_numpy(np.array(Image.open(ds.paths(1)["rgb"]))).permute(2, 0, 1)
    assert torch.equal(
        ((sample["input"] * IMAGENET_STD + IMAGENET_MEAN) * 255).round().to(torch.uint8), stored
    )


def test_same_seed_gives_identical_bytes(root: Path, tmp_path: Path) -> None:
    again = write_taskonomy(tmp_path / "again", N["train"], N["test"], H, W, SEED)
    assert _tree_hashes(again) == _tree_hashes(root)
    other = write_taskonomy(tmp_path / "other", N["train"], N["test"], H, W, SEED + 1)
    assert _tree_hashes(other) != _tree_hashes(root)
    with pytest.raises(ValueError, match="not an empty directory"):
        write_taskonomy(again, 1, 1, H, W, SEED)


def test_task_subsets_return_only_their_targets(root: Path) -> None:
    only_normal = Taskonomy(root, "test", ("normal",))[0]
    assert set(only_normal) == {"input", "name", "normal"}
    assert _same(only_normal["normal"], Taskonomy(root, "test")[0]["normal"])  # still masked by depth
    two = Taskonomy(root, "test", ["keypoints2d", "edge_texture"])[0]
    assert set(two) == {"input", "name", "keypoints2d", "edge_texture"}
    with pytest.raises(ValueError, match="unknown Taskonomy task"):
        Taskonomy(root, "test", ("depth",))


# ------------------------------------------------------------------------------------------ augmentation


def test_augmentation_is_seeded_and_pads_with_the_contract_fills(root: Path) -> None:
    ds = Taskonomy(root, "train", TASKS, augment=True, crop=(24, 28), seed=3)
    a, b = ds[1], ds[1]
    assert a["input"].shape == (3, 24, 28) and a["segment_semantic"].shape == (24, 28)
    assert all(_same(a[k], b[k]) for k in ("input", *TASKS))
    ds.set_epoch(1)
    assert not _same(ds[1]["input"], a["input"])
    ds.set_epoch(0)
    assert _same(ds[1]["input"], a["input"])
    # A crop larger than any scaled frame must be padded: image 0 (before normalisation), seg 255, floats NaN.
    big = Taskonomy(root, "train", TASKS, augment=True, crop=(80, 90), scale=(0.5, 0.6), seed=0)
    s = big[0]
    assert int(s["segment_semantic"][0, 0]) == 255
    assert all(bool(s[t][:, 0, 0].isnan().all()) for t in TASKS[1:])
    assert torch.allclose(s["input"][:, 0, 0], (-IMAGENET_MEAN / IMAGENET_STD).flatten())


def test_flip_negates_normal_x(root: Path) -> None:
    """With scale 1 and a full-frame crop, an augmented sample is the raw one, possibly mirrored."""
    ds = Taskonomy(root, "train", TASKS, augment=True, crop=(H, W), scale=(1.0, 1.0), seed=0)
    raw = ds.load_raw(2)
    flips = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        s = ds[2]
        if not _same(s["depth_zbuffer"], raw["depth_zbuffer"]):  # a room is never mirror-symmetric
            flips += 1
            mirrored = raw["normal"].flip(-1)
            assert _same(s["normal"][0], -mirrored[0]) and _same(s["normal"][1:], mirrored[1:])
            assert _same(s["depth_zbuffer"], raw["depth_zbuffer"].flip(-1))
            assert _same(s["segment_semantic"], raw["segment_semantic"].flip(-1))
        else:
            assert _same(s["normal"], raw["normal"])
    assert 0 < flips < 8
    no_flip = Taskonomy(root, "train", TASKS, augment=True, crop=(H, W), scale=(1.0, 1.0), flip=False)
    for epoch in range(4):
        no_flip.set_epoch(epoch)
        assert _same(no_flip[2]["normal"], raw["normal"])


# ------------------------------------------------------------------------------------------ loud errors


def _entry(root: Path, split: str = "test", index: int = 0) -> list[Path]:
    rel = json.loads((root / "taskonomy.json").read_text())[split][index]
    return [root / split / p for p in rel]


def test_missing_listed_file(copy: Path) -> None:
    normal = _entry(copy)[2]
    normal.unlink()
    with _raises(normal, "does not exist"):
        Taskonomy(copy, "test")[0]


def test_truncated_png(copy: Path) -> None:
    depth = _entry(copy)[3]
    data = depth.read_bytes()
    depth.write_bytes(data[: len(data) // 2])
    with _raises(depth, "not a readable PNG"):
        Taskonomy(copy, "test")[0]


def test_label_of_another_size(copy: Path) -> None:
    rgb, edge = _entry(copy)[0], _entry(copy)[5]
    Image.fromarray(np.zeros((H // 2, W), dtype=np.uint16)).save(edge)
    with _raises(
        edge, re.escape(f"edge_texture is ({H // 2}, {W}) (H, W) but its image {rgb} is ({H}, {W})")
    ):
        Taskonomy(copy, "test")[0]


def test_seg_label_out_of_range(copy: Path) -> None:
    seg_path = _entry(copy)[1]
    seg = np.array(Image.open(seg_path))
    seg[0, 0] = 18
    Image.fromarray(seg).save(seg_path)
    with _raises(seg_path, re.escape("segment labels must be 0..17, found [18]")):
        Taskonomy(copy, "test")[0]


def test_bit_depth_mismatch(copy: Path) -> None:
    depth = _entry(copy)[3]
    Image.fromarray(np.full((H, W), 7, dtype=np.uint8)).save(depth)
    with _raises(depth, "expected a 16-bit single-channel PNG, found bit depth 8"):
        Taskonomy(copy, "test")[0]
    seg = _entry(copy)[1]
    Image.fromarray(np.ones((H, W), dtype=np.uint16)).save(seg)
    with _raises(seg, "expected a 8-bit single-channel PNG, found bit depth 16"):
        Taskonomy(copy, "test", ("segment_semantic",))[0]


def test_json_entry_with_five_paths(copy: Path) -> None:
    listing = copy / "taskonomy.json"
    data = json.loads(listing.read_text())
    data["train"][2] = data["train"][2][:5]
    listing.write_text(json.dumps(data))
    with _raises(listing, re.escape("train[2] must be a list of 6 relative paths")):
        Taskonomy(copy, "train")


def test_prior_factor_missing_or_malformed(copy: Path) -> None:
    prior = copy / "semseg_prior_factor.npy"
    np.save(prior, np.ones(16))
    with _raises(prior, re.escape("expected a float array of shape (17,)")):
        Taskonomy(copy, "test")
    weights = np.ones(17)
    weights[3] = 0
    np.save(prior, weights)
    with _raises(prior, "finite and > 0"):
        Taskonomy(copy, "test")
    prior.unlink()
    with _raises(prior, "prior-factor file not found"):
        Taskonomy(copy, "test")


# ------------------------------------------------------------------------------------------ data verify


def test_verify_passes_on_synthetic_output_with_counts_and_histogram(root: Path, capsys) -> None:
    from mtlprune.cli import main
    from mtlprune.datasets.verify import verify

    report = verify("taskonomy", root)
    assert report.ok, report.problems
    assert report.counts == N and report.sizes == {(H, W): sum(N.values())}
    # The histogram counts every pixel of every label image in decoded ids: classes 0..16, 255 = unlabeled.
    assert sum(report.class_histogram.values()) == sum(N.values()) * H * W
    assert set(report.class_histogram) <= set(range(17)) | {255}
    assert len(set(report.class_histogram) - {255}) >= 3
    assert main(["data", "verify", "--dataset", "taskonomy", "--root", str(root)]) == 0
    assert f"{N['train']} train, {N['test']} test" in capsys.readouterr().out


def test_verify_lists_every_problem_with_its_path_and_exits_nonzero(copy: Path, capsys) -> None:
    from mtlprune.cli import main
    from mtlprune.datasets.verify import verify

    missing = _entry(copy, "train", 0)[2]
    missing.unlink()
    truncated = _entry(copy, "train", 1)[3]
    truncated.write_bytes(truncated.read_bytes()[:40])
    eight_bit = _entry(copy, "test", 1)[4]
    Image.fromarray(np.full((H, W), 3, dtype=np.uint8)).save(eight_bit)
    seg_path = _entry(copy, "test", 2)[1]
    seg = np.array(Image.open(seg_path))
    seg[1, 1] = 30
    Image.fromarray(seg).save(seg_path)

    report = verify("taskonomy", copy)
    expected = {
        missing: "does not exist",
        truncated: "not a readable PNG",
        eight_bit: "found bit depth 8",
        seg_path: re.escape("found [30]"),
    }
    assert len(report.problems) == len(expected), report.problems
    for path, words in expected.items():
        assert any(re.search(re.escape(str(path)) + ".*" + words, p) for p in report.problems), path
    assert report.counts == N
    assert main(["data", "verify", "--dataset", "taskonomy", "--root", str(copy)]) != 0
    out = capsys.readouterr().out
    assert all(str(path) in out for path in expected)
