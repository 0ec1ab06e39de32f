"""Tests of the synthetic NYU-v2 renderer: exact geometry, on-disk format, determinism, argument checks."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtlprune.datasets import synthetic
from mtlprune.datasets.synthetic import (
    NYU40_CLASSES,
    Frame,
    encode_normals,
    render_frame,
    to_nyu_axes,
    write_nyuv2,
)

H, W = 48, 64  # small on purpose: the whole module must stay quick
FLOOR = NYU40_CLASSES.index("floor")
CEILING = NYU40_CLASSES.index("ceiling")
WALL = NYU40_CLASSES.index("wall")
ALLOWED_SEG = set(range(40)) | {255}


def _rays(frame: Frame) -> np.ndarray:
    """Camera-frame rays ((u - cx) / fx, (v - cy) / fy, 1), computed here independently of the module."""
    cam = frame.camera
    height, width = frame.depth.shape
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], axis=-1)


def _valid(normal: np.ndarray) -> np.ndarray:
    """Pixels with a valid (non-NaN) float normal."""
    return ~np.isnan(normal).any(axis=-1)


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path: byte-level comparison of two outputs."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """Sixteen independent small frames shared by the geometry tests."""
    return [render_frame(np.random.default_rng(c), H, W) for c in np.random.SeedSequence(2024).spawn(16)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small dataset on disk (3 train + 2 test frames) shared by the file-format tests."""
    return write_nyuv2(tmp_path_factory.mktemp("ds") / "nyu", n_train=3, n_test=2, height=H, width=W, seed=11)


def _floor_frames(frames: list[Frame], minimum: int = 20) -> list[Frame]:
    """Frames with enough valid floor pixels for plane checks (and most frames must qualify)."""
    chosen = [f for f in frames if np.count_nonzero((f.seg == FLOOR) & _valid(f.normal)) >= minimum]
    assert len(chosen) >= len(frames) // 2, "most frames should show a good patch of floor"
    return chosen


# ------------------------------------------------------------------------------------------ class list


def test_class_list_is_nyu40() -> None:
    assert len(NYU40_CLASSES) == 40
    assert len(set(NYU40_CLASSES)) == 40
    assert NYU40_CLASSES[:3] == ("wall", "floor", "cabinet")
    assert NYU40_CLASSES[21] == "ceiling"
    assert NYU40_CLASSES[23] == "refridgerator"
    assert NYU40_CLASSES[-3:] == ("otherstructure", "otherfurniture", "otherprop")


# ------------------------------------------------------------------------------------- frame contents


def test_frame_arrays_have_documented_types(frames: list[Frame]) -> None:
    for f in frames:
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == (H, W, 3)
        assert f.seg.dtype == np.uint8 and f.seg.shape == (H, W)
        assert f.normal.dtype == np.float32 and f.normal.shape == (H, W, 3)
        assert f.depth.dtype == np.float32 and f.depth.shape == (H, W)


def test_depth_positive_and_finite_everywhere(frames: list[Frame]) -> None:
    for f in frames:
        assert np.all(np.isfinite(f.depth))
        assert f.depth.min() > 0


def test_seg_values_are_nyu40_ids_or_ignore(frames: list[Frame]) -> None:
    for f in frames:
        assert set(np.unique(f.seg).tolist()) <= ALLOWED_SEG
        assert WALL in f.seg  # the room is always visible


def test_some_pixels_are_invalid_like_real_data(frames: list[Frame]) -> None:
    assert any((f.seg == 255).any() for f in frames), "some frame should contain an unlabeled object"
    assert any((~_valid(f.normal)).any() for f in frames), "occlusion bands make some normals invalid"
    for f in frames:
        nan = np.isnan(f.normal)
        assert np.array_equal(nan.any(axis=-1), nan.all(axis=-1)), "invalid pixels are NaN in all channels"
        assert _valid(f.normal).mean() > 0.5


def test_window_and_mirror_normals_are_invalid(frames: list[Frame]) -> None:
    for f in frames:
        specular = np.isin(f.seg, [NYU40_CLASSES.index("window"), NYU40_CLASSES.index("mirror")])
        assert not _valid(f.normal)[specular].any()


def test_float_normals_are_unit_and_face_the_camera(frames: list[Frame]) -> None:
    for f in frames:
        valid = _valid(f.normal)
        n = f.normal[valid].astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        assert np.all(np.sum(n * _rays(f)[valid], axis=1) < 0)


def test_floor_normal_is_constant_and_points_up(frames: list[Frame]) -> None:
    for f in _floor_frames(frames):
        n = f.normal[(f.seg == FLOOR) & _valid(f.normal)].astype(np.float64)
        np.testing.assert_allclose(n, np.broadcast_to(n[0], n.shape), atol=1e-5)
        rotation = f.camera.rotation
        np.testing.assert_allclose(rotation @ n[0], [0.0, 0.0, 1.0], atol=1e-5)  # world up
        assert n[0][1] < 0  # "up" is negative y in the y-down camera frame
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_wall_normals_are_horizontal_room_axes(frames: list[Frame]) -> None:
    for f in frames:
        n = f.normal[(f.seg == WALL) & _valid(f.normal)].astype(np.float64) @ f.camera.rotation.T
        assert np.all(np.abs(n[:, 2]) < 1e-5)
        assert np.all(np.abs(n[:, :2]).max(axis=1) > 1 - 1e-5)


def test_floor_points_lie_on_the_rendered_floor_plane(frames: list[Frame]) -> None:
    for f in _floor_frames(frames):
        floor = f.seg == FLOOR
        points = (f.depth[..., None].astype(np.float64) * _rays(f))[floor]
        normal = f.normal[floor & _valid(f.normal)][0].astype(np.float64)
        # The floor is z = 0 in the world and the camera is position[2] above it.
        np.testing.assert_allclose(points @ normal, -f.camera.position[2], atol=1e-4)
        # A free least-squares plane through the points has the rendered normal.
        centred = points - points.mean(axis=0)
        fitted = np.linalg.svd(centred, full_matrices=False)[2][-1]
        assert abs(fitted @ normal) > 1 - 1e-6
        assert np.abs(centred @ fitted).max() < 1e-4


def test_depth_is_z_depth_not_ray_length(frames: list[Frame]) -> None:
    for f in _floor_frames(frames):
        floor = f.seg == FLOOR
        rays = _rays(f)[floor]
        depth = f.depth[floor].astype(np.float64)
        world = (depth[:, None] * rays) @ f.camera.rotation.T + f.camera.position
        np.testing.assert_allclose(world[:, 2], 0.0, atol=1e-4)
        # Read as ray length instead, the same numbers bend the floor: the check above can tell the two apart.
        unit = rays / np.linalg.norm(rays, axis=1, keepdims=True)
        as_length = (depth[:, None] * unit) @ f.camera.rotation.T
        assert np.ptp(as_length[:, 2]) > 1e-2
    for f in frames:
        ceiling = f.seg == CEILING
        if ceiling.sum() < 10:
            continue
        world = (f.depth[ceiling][:, None] * _rays(f)[ceiling]) @ f.camera.rotation.T + f.camera.position
        assert np.ptp(world[:, 2]) < 1e-4  # one horizontal plane
        assert world[0, 2] > f.camera.position[2]


def test_camera_backproject_matches_independent_rays(frames: list[Frame]) -> None:
    f = frames[0]
    np.testing.assert_allclose(f.camera.backproject(f.depth), f.depth[..., None] * _rays(f), rtol=1e-12)
    assert f.camera.fx == pytest.approx(518.8579 * W / 640)  # NYU Kinect focal length, scaled
    assert 55 < np.degrees(2 * np.arctan(W / 2 / f.camera.fx)) < 70  # horizontal field of view


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(1, 24), width=st.integers(1, 32))
def test_invariants_hold_for_any_seed_and_size(seed: int, height: int, width: int) -> None:
    f = render_frame(np.random.default_rng(seed), height, width)
    assert f.depth.shape == (height, width) and np.all(f.depth > 0) and np.all(np.isfinite(f.depth))
    assert set(np.unique(f.seg).tolist()) <= ALLOWED_SEG
    valid = _valid(f.normal)
    n = f.normal[valid].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(n * _rays(f)[valid], axis=1) < 0)


def test_render_frame_is_deterministic_per_generator_state() -> None:
    a = render_frame(np.random.default_rng(3), H, W)
    b = render_frame(np.random.default_rng(3), H, W)
    c = render_frame(np.random.default_rng(4), H, W)
    for name in ("rgb", "seg", "normal", "depth"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.depth, c.depth)


# ------------------------------------------------------------------------------------- normal encoding


def test_encode_normals_follows_the_rule() -> None:
    nan = np.nan
    normal = np.array(
        [[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.28, -0.96, 0.0], [nan, nan, nan], [0.0, nan, 1.0]]]
    )
    expected = np.array([[[254, 128, 128], [0, 128, 128], [163, 5, 128], [255, 255, 255], [255, 255, 255]]])
    encoded = encode_normals(normal)
    assert encoded.dtype == np.uint8
    np.testing.assert_array_equal(encoded, expected)


def test_encode_normals_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="normal"):
        encode_normals(np.zeros((4, 4)))


def test_encoded_normals_decode_to_unit_vectors(frames: list[Frame]) -> None:
    for f in frames:
        encoded = encode_normals(f.normal)
        invalid = (encoded == 255).all(axis=-1)
        np.testing.assert_array_equal(invalid, ~_valid(f.normal))
        decoded = encoded[~invalid] / 127.5 - 1.0
        np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=0.01)


def test_to_nyu_axes_is_the_rotation_to_right_forward_up(frames: list[Frame]) -> None:
    np.testing.assert_array_equal(to_nyu_axes(np.array([[[1.0, 2.0, 3.0]]])), [[[1.0, 3.0, -2.0]]])
    assert np.isnan(to_nyu_axes(np.full((1, 1, 3), np.nan))).all()
    for f in _floor_frames(frames):
        floor = to_nyu_axes(f.normal)[(f.seg == FLOOR) & _valid(f.normal)]
        assert np.all(floor[:, 2] > 0.9)  # B = up for a camera with small pitch and roll


def _png_normals(root: Path, rel: str) -> np.ndarray:
    """Decoded normals of a normal_mask PNG, NaN where invalid."""
    encoded = np.asarray(Image.open(root / rel))
    decoded = encoded / 127.5 - 1.0
    decoded[(encoded == 255).all(axis=-1)] = np.nan
    return decoded


def test_png_normal_axes_match_the_real_nyuv2_samples(dataset: Path, real_nyuv2_root: Path) -> None:
    """Floor up (+B), ceiling down (-B), camera-facing surfaces negative G: in real and synthetic files."""
    for root in (real_nyuv2_root, dataset):
        listing = json.loads((root / "nyu_v2_3task.json").read_text())
        floor, ceiling = [], []
        for _, seg, normal, _ in listing["train"] + listing["test"]:
            labels = np.asarray(Image.open(root / seg))
            decoded = _png_normals(root, normal)
            floor.append(decoded[labels == FLOOR])
            ceiling.append(decoded[labels == CEILING])
        floor_median = np.nanmedian(np.concatenate(floor), axis=0)
        assert floor_median[2] > 0.8 and floor_median[1] < 0.2, (root, floor_median)
        ceiling_all = np.concatenate(ceiling)
        if np.isfinite(ceiling_all).any():
            assert np.nanmedian(ceiling_all, axis=0)[2] < -0.8, root


# --------------------------------------------------------------------------------------- files on disk


def test_json_listing_is_exact(dataset: Path) -> None:
    listing = json.loads((dataset / "nyu_v2_3task.json").read_text())
    assert set(listing) == {"train", "test"}
    assert len(listing["train"]) == 3 and len(listing["test"]) == 2
    stems = []
    for entry in listing["train"] + listing["test"]:
        assert isinstance(entry, list) and len(entry) == 4
        img, seg, normal, depth = entry
        stem = re.fullmatch(r"img/(\d{4})\.png", img).group(1)
        assert (seg, normal, depth) == (f"seg/{stem}.png", f"normal_mask/{stem}.png", f"depth/{stem}.npy")
        for rel in entry:
            assert not Path(rel).is_absolute() and ".." not in Path(rel).parts
            assert (dataset / rel).is_file()
        stems.append(stem)
    assert stems == [f"{i:04d}" for i in range(5)]  # train first, test continues the numbering
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    listed = {rel for entries in listing.values() for entry in entries for rel in entry}
    assert on_disk == listed | {"nyu_v2_3task.json"}


def test_files_have_the_documented_formats(dataset: Path) -> None:
    listing = json.loads((dataset / "nyu_v2_3task.json").read_text())
    for img, seg, normal, depth in listing["train"] + listing["test"]:
        with Image.open(dataset / img) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (W, H))
        with Image.open(dataset / seg) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (W, H))
            assert set(np.unique(np.asarray(im)).tolist()) <= ALLOWED_SEG
        with Image.open(dataset / normal) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (W, H))
            encoded = np.asarray(im)
        valid = ~(encoded == 255).all(axis=-1)
        assert valid.mean() > 0.5
        decoded = encoded[valid] / 127.5 - 1.0
        np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=0.01)
        d = np.load(dataset / depth, allow_pickle=False)
        assert d.dtype == np.float32 and d.shape == (H, W)
        assert np.all(np.isfinite(d)) and d.min() > 0


def test_files_hold_the_documented_frames(dataset: Path) -> None:
    """Train frame i is rendered from SeedSequence(seed).spawn(2)[0].spawn(n_train)[i], test from [1]."""
    listing = json.loads((dataset / "nyu_v2_3task.json").read_text())
    train_seq, test_seq = np.random.SeedSequence(11).spawn(2)
    for split, seq in (("train", train_seq), ("test", test_seq)):
        children = seq.spawn(len(listing[split]))
        for (img, seg, normal, depth), child in zip(listing[split], children, strict=True):
            frame = render_frame(np.random.default_rng(child), H, W)
            np.testing.assert_array_equal(np.asarray(Image.open(dataset / img)), frame.rgb)
            np.testing.assert_array_equal(np.asarray(Image.open(dataset / seg)), frame.seg)
            encoded = encode_normals(to_nyu_axes(frame.normal))
            np.testing.assert_array_equal(np.asarray(Image.open(dataset / normal)), encoded)
            np.testing.assert_array_equal(np.load(dataset / depth), frame.depth)


def test_same_seed_gives_byte_identical_files(tmp_path: Path, dataset: Path) -> None:
    again = write_nyuv2(tmp_path / "again", n_train=3, n_test=2, height=H, width=W, seed=11)
    assert _tree_hashes(again) == _tree_hashes(dataset)
    other = _tree_hashes(write_nyuv2(tmp_path / "other", n_train=3, n_test=2, height=H, width=W, seed=12))
    reference = _tree_hashes(dataset)
    assert other.keys() == reference.keys()
    assert other["nyu_v2_3task.json"] == reference["nyu_v2_3task.json"]
    for sub in ("img", "seg", "normal_mask", "depth"):
        assert all(other[k] != reference[k] for k in reference if k.startswith(sub + "/"))


def test_frames_depend_only_on_seed_split_and_index(tmp_path: Path) -> None:
    small = _tree_hashes(write_nyuv2(tmp_path / "small", n_train=2, n_test=1, height=H, width=W, seed=5))
    large = _tree_hashes(write_nyuv2(tmp_path / "large", n_train=3, n_test=2, height=H, width=W, seed=5))
    for sub, ext in (("img", "png"), ("seg", "png"), ("normal_mask", "png"), ("depth", "npy")):
        assert small[f"{sub}/0000.{ext}"] == large[f"{sub}/0000.{ext}"]
        assert small[f"{sub}/0001.{ext}"] == large[f"{sub}/0001.{ext}"]
        assert small[f"{sub}/0002.{ext}"] == large[f"{sub}/0003.{ext}"]  # first test frame, renumbered


def test_returns_the_output_path_and_leaves_no_temporary_directory(tmp_path: Path) -> None:
    out = write_nyuv2(str(tmp_path / "nested" / "out"), n_train=1, n_test=1, height=8, width=8, seed=0)
    assert out == tmp_path / "nested" / "out"
    assert [p.name for p in (tmp_path / "nested").iterdir()] == ["out"]


# ----------------------------------------------------------------------------- refusals and arguments


def test_refuses_a_non_empty_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=re.escape(str(out))):
        write_nyuv2(out, n_train=1, n_test=1, height=8, width=8, seed=0)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a directory")
    with pytest.raises(ValueError, match=re.escape(str(out))):
        write_nyuv2(out, n_train=1, n_test=1, height=8, width=8, seed=0)


def test_accepts_an_empty_existing_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_nyuv2(out, n_train=1, n_test=1, height=8, width=8, seed=0)
    assert (out / "nyu_v2_3task.json").is_file()


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.render_frame
    calls = []

    def flaky(rng: np.random.Generator, height: int, width: int) -> Frame:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(rng, height, width)

    monkeypatch.setattr(synthetic, "render_frame", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_nyuv2(tmp_path / "out", n_train=2, n_test=2, height=8, width=8, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_train", 0),
        ("n_test", 0),
        ("n_test", -2),
        ("height", 0),
        ("width", -3),
        ("height", 2.5),
        ("width", True),
        ("seed", -1),
        ("seed", "7"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path: Path, name: str, value: object) -> None:
    kwargs: dict[str, object] = {"n_train": 1, "n_test": 1, "height": 8, "width": 8, "seed": 0}
    kwargs[name] = value
    with pytest.raises(ValueError, match=rf"^{name} .*{re.escape(repr(value))}"):
        write_nyuv2(tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("height", "width", "name"), [(0, 8, "height"), (8, 0, "width"), (8, 2.0, "width")])
def test_render_frame_rejects_bad_sizes(height: object, width: object, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        render_frame(np.random.default_rng(0), height, width)
