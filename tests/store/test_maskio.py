"""Bit-packed mask storage: exact round trips, one bit per weight, no pickle, loud errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlprune.store.maskio import masks_to_bytes, read_masks, read_task_masks, write_masks, write_task_masks


def test_round_trip_of_odd_shapes_from_torch_and_numpy(tmp_path):
    gen = torch.Generator().manual_seed(0)
    masks = {
        "backbone.conv1.weight": torch.rand(5, 3, 7, 7, generator=gen) > 0.3,  # 735 bits: not a multiple of 8
        "heads.normal.final.weight": np.array([[[[True]]]]),
        "empty.weight": torch.zeros(0, 3, dtype=torch.bool),
    }
    write_masks(tmp_path / "m.npz", masks)
    back = read_masks(tmp_path / "m.npz")
    assert list(back) == list(masks)
    for name, mask in masks.items():
        expected = mask.numpy() if isinstance(mask, torch.Tensor) else mask
        assert back[name].dtype == np.bool_ and np.array_equal(back[name], expected), name


def test_one_bit_per_weight():
    mask = {"w": torch.rand(1000, 1000, generator=torch.Generator().manual_seed(1)) > 0.5}
    # Random bits do not compress: the archive is about 10^6 / 8 bytes plus a small header, 8× below bool.
    assert len(masks_to_bytes(mask)) < 1_000_000 / 8 * 1.02 + 2_000


def test_task_masks_round_trip_and_no_pickle(tmp_path):
    task_masks = {
        "segment_semantic": {"backbone.a": torch.tensor([True, False, True])},
        "normal": {"backbone.a": torch.tensor([False, False, True])},
    }
    write_task_masks(tmp_path / "t.npz", task_masks)
    back = read_task_masks(tmp_path / "t.npz")
    assert back["normal"]["backbone.a"].tolist() == [False, False, True]
    assert back["segment_semantic"]["backbone.a"].tolist() == [True, False, True]
    with np.load(tmp_path / "t.npz", allow_pickle=False) as archive:  # readable without pickle
        assert archive["names"].dtype.kind == "U"


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="boolean"):
        masks_to_bytes({"w": torch.ones(3)})
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="broken.npz: not a readable mask archive"):
        read_masks(broken)
