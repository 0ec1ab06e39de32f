"""One run id, one set of numbers: the same matrix on two stores, however it is run, ends bit-identical.

On a CPU every stage runs on exactly one torch thread (mtlprune.engine.determinism), so `--workers 1` (a
stage in this process, which has 2 threads), `--workers 2` (spawned pool processes) and a process with 4
threads all give the same metrics, masks and logs. Every global RNG is seeded from the stage's run id before
the stage's own code runs, so what ran before in a worker cannot leak into a method's masks.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch

from mtlprune import registry
from mtlprune.engine.determinism import STAGE_CPU_THREADS, seed_everything, stage_environment, stage_seed
from mtlprune.engine.runner import run_stage
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.stages import Stage, plan
from mtlprune.store import Store
from tests.helpers import load_masks, tiny_matrix

METHODS = [{"name": "magnitude"}, {"name": "gmp", "params": {"frequency": 2}}, {"name": "snip"}]


def _matrix():
    return tiny_matrix(
        methods=METHODS, sparsities=[0.7], finetune={"steps": 3, "batch_size": 4}, controls=True
    )


def _numbers(store: Store, run_ids: list[str]) -> dict[str, dict]:
    out = {}
    for run_id in run_ids:
        result = json.loads((store.run_dir(run_id) / "result.json").read_text())
        out[run_id] = {
            "metrics": result["metrics"],
            "sparsity": result["sparsity"],
            "log": (store.run_dir(run_id) / "log.jsonl").read_text(),
            "threads": result["determinism"]["cpu_threads"],
        }
    return out


@pytest.mark.slow
def test_workers_1_and_workers_2_give_bit_identical_numbers(tmp_path):
    matrix = _matrix()
    ids = [s.run_id for s in [*matrix.dense_stages(), *matrix.expand()]]
    one, two = Store(tmp_path / "one"), Store(tmp_path / "two")
    torch.set_num_threads(2)  # what this process uses outside a stage (tests/conftest.py)
    assert run_matrix(matrix, one, show_progress=False, workers=1).failed == {}
    assert run_matrix(matrix, two, show_progress=False, workers=2).failed == {}
    first, second = _numbers(one, ids), _numbers(two, ids)
    assert len(first) == 1 + 3 + 1  # dense, three methods, the control row
    assert first == second  # every metric, sparsity and log line, exactly
    assert {v["threads"] for v in first.values()} == {STAGE_CPU_THREADS}
    assert torch.get_num_threads() == 2  # the stage's thread count does not leak out of it


@pytest.mark.slow
def test_a_process_with_more_threads_gives_the_same_stage(tmp_path):
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5])
    dense = Stage(matrix.dense_stages()[0])
    numbers = []
    for threads in (2, 4):
        torch.set_num_threads(threads)
        store = Store(tmp_path / f"t{threads}")
        assert run_stage(dense, store, matrix.runtime).status == "done"
        numbers.append(_numbers(store, [dense.run_id]))
    torch.set_num_threads(2)
    assert numbers[0] == numbers[1]


def test_stage_environment_sets_one_thread_and_restores():
    torch.set_num_threads(3)
    with stage_environment(torch.device("cpu")) as record:
        assert torch.get_num_threads() == 1
        assert record == {"device_type": "cpu", "cpu_threads": 1, "flush_denormal": True}
        assert torch.tensor(1e-40) * 1 == 0  # a denormal is flushed to zero inside a stage
    assert torch.get_num_threads() == 3
    assert torch.tensor(1e-40) * 1 != 0  # and kept outside it
    torch.set_num_threads(2)


def test_stage_seed_is_a_pure_function_of_the_run_id():
    assert stage_seed("aad16f2352701cf1") == stage_seed("aad16f2352701cf1")
    assert stage_seed("aad16f2352701cf1") != stage_seed("e4b3dd70de411d39")
    assert 0 <= stage_seed("aad16f2352701cf1") < 2**63


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(123)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)  # whatever ran in between
    seed_everything(123)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


@pytest.fixture
def global_rng_method():
    """tests/plugins/global_rng_method.py loaded, and unloaded afterwards (other files list every method)."""
    name, module = "test-global-rng", "tests.plugins.global_rng_method"
    registry.load_plugins([module])
    yield name
    registry.METHODS._items.pop(name, None)
    registry._loaded.discard(module)
    sys.modules.pop(module, None)


@pytest.mark.slow
def test_a_method_that_draws_from_the_global_rng_ignores_what_ran_before(tmp_path, global_rng_method):
    """A method masking with torch.rand, np.random and random (the global RNGs) after different noise."""
    matrix = tiny_matrix(methods=[{"name": "test-global-rng"}], sparsities=[0.5])
    masks = []
    for i, noise in enumerate((0, 7)):
        store = Store(tmp_path / f"s{i}")
        dense, cell = plan(matrix)
        assert run_stage(dense, store, matrix.runtime).status == "done"
        torch.rand(noise), np.random.rand(noise), [random.random() for _ in range(noise)]
        assert run_stage(cell, store, matrix.runtime).status == "done"
        masks.append(load_masks(store.run_dir(cell.run_id)))
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
