"""Train/validation carving, split views, worker-independent batch streams, and test-split isolation."""

from __future__ import annotations

import pytest
import torch

from mtlprune.engine.data import batch_stream, build_dataset, carve_validation
from mtlprune.execution.matrix import run_matrix
from mtlprune.store import Store
from tests.helpers import tiny_matrix


def test_carve_is_seeded_disjoint_and_complete():
    train, val = carve_validation(20, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == list(range(20)) and not set(train) & set(val)
    assert carve_validation(20, 0.25, seed=3) == (train, val)
    assert carve_validation(20, 0.25, seed=4)[1] != val
    assert carve_validation(20, 0.0, seed=3) == (list(range(20)), [])
    assert len(carve_validation(3, 0.01, seed=0)[1]) == 1  # a positive fraction always holds one out


def test_carve_refuses_to_leave_nothing_to_train():
    import pytest

    with pytest.raises(ValueError, match="leaves nothing to train on"):
        carve_validation(2, 0.9, seed=0)


def test_train_and_val_views(tmp_path):
    data = tiny_matrix().datasets[0].model_copy(update={"val_fraction": 0.25})
    train = build_dataset(data, tmp_path, "train", seed=0)
    val = build_dataset(data, tmp_path, "val")
    test = build_dataset(data, tmp_path, "test")
    assert (len(train), len(val), len(test)) == (6, 2, 4)
    assert not set(train.indices) & set(val.indices)
    assert train[0]["input"].shape == (3, 32, 32)  # augmented crop
    assert val[0]["input"].shape == (3, 32, 40)  # native resolution, no augmentation
    assert train.tasks_used == data.tasks  # attributes of the underlying dataset show through


def test_batch_stream_is_the_same_with_loader_workers(tmp_path):
    data = tiny_matrix().datasets[0]
    train = build_dataset(data, tmp_path, "train", seed=5)
    serial = list(batch_stream(train, 4, seed=5, start=3, steps=4))
    parallel = list(batch_stream(train, 4, seed=5, start=3, steps=4, num_workers=2))
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel, strict=True):
        assert a["name"] == b["name"]
        for key in ("input", "segment_semantic", "normal", "depth_zbuffer"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_test_split_is_read_only_after_training(tmp_path, monkeypatch):
    """Within every stage, no test sample is read before the stage's last training batch."""
    import mtlprune.engine.cell
    import mtlprune.engine.dense
    from mtlprune.datasets.nyuv2 import NYUv2

    events: list[str] = []
    original_load, original_begin = NYUv2.load_raw, mtlprune.engine.dense.begin_stage

    def load_raw(self, index):
        events.append(f"read-{self.split}")
        return original_load(self, index)

    def begin(*args, **kwargs):
        events.append("stage")
        return original_begin(*args, **kwargs)

    monkeypatch.setattr(NYUv2, "load_raw", load_raw)
    for module in (mtlprune.engine.dense, mtlprune.engine.cell):
        monkeypatch.setattr(module, "begin_stage", begin)
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5])
    assert run_matrix(matrix, Store(tmp_path), show_progress=False).failed == {}
    stages = " ".join(events).split("stage")[1:]
    assert len(stages) == 2
    for stage in stages:
        reads = stage.split()
        first_test = reads.index("read-test")
        assert "read-train" not in reads[first_test:]
        assert "read-train" in reads[:first_test]


@pytest.mark.slow
def test_best_val_selection_ends_on_the_lowest_validation_loss(tmp_path):
    """The selected step is the argmin of the logged validation losses; the test split plays no part."""
    import json

    data = dict(tiny_matrix().datasets[0].model_dump(exclude={"root"}), val_fraction=0.25)
    matrix = tiny_matrix(
        datasets=[data],
        methods=[{"name": "magnitude"}],
        sparsities=[0.5],
        eval={"batch_size": 4, "selection": "best_val", "val_every": 2},
        runtime={"device": "cpu", "log_every": 1},
    )
    store = Store(tmp_path)
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    dense_id = matrix.dense_stages()[0].run_id
    result = store.result(dense_id)
    assert (result.splits.train, result.splits.val, result.splits.test) == (6, 2, 4)
    records = [json.loads(line) for line in (store.run_dir(dense_id) / "log.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [1, 3, 5]  # every 2 steps and after the last of 6
    assert (result.selection.rule, result.selection.selected_step) == ("best_val", min(val, key=val.get))
    cell = store.result(matrix.expand()[0].run_id)
    assert cell.selection.rule == "best_val" and 0 <= cell.selection.selected_step < 2


def test_best_val_without_a_validation_split_is_a_config_error():
    import pytest

    from mtlprune.spec import ConfigError

    with pytest.raises(ConfigError, match=r"best_val' needs datasets\[0\].val_fraction > 0"):
        tiny_matrix(eval={"selection": "best_val"})
