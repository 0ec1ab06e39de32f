"""Loading is never the bottleneck: train-loader throughput vs the CPU-width model's consumption.

NYU-v2 at its native 480×640 with the paper's 321×321 training crop and augmentation; the target is a
loader that delivers at least twice the samples per second that a training step consumes.
"""

from __future__ import annotations

import pytest
import torch

from mtlprune.datasets.nyuv2 import NYUv2
from mtlprune.engine.data import batch_stream
from mtlprune.engine.train import StepRunner
from mtlprune.registry import ARCHS
from mtlprune.spec import TrainSpec

BATCH = 4
CROP = (321, 321)
TASKS = ("segment_semantic", "normal", "depth_zbuffer")
_rates: dict[str, float] = {}


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    from mtlprune.datasets.synthetic import write_nyuv2

    return write_nyuv2(
        tmp_path_factory.mktemp("perf") / "nyu", n_train=8, n_test=1, height=480, width=640, seed=0
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_throughput(benchmark, nyu_root, num_workers):
    benchmark.group = "loader vs model"
    train = NYUv2(nyu_root, "train", TASKS, augment=True, crop=CROP, seed=0)

    def load_batches() -> None:
        for _ in batch_stream(train, BATCH, seed=0, steps=4, num_workers=num_workers):
            pass

    benchmark.pedantic(load_batches, rounds=3, warmup_rounds=1)
    _rates[f"loader_w{num_workers}"] = 4 * BATCH / benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = _rates[f"loader_w{num_workers}"]


def test_model_consumption_and_ratio(benchmark, nyu_root):
    benchmark.group = "loader vs model"
    torch.manual_seed(0)
    model = ARCHS.get("deeplab_resnet34")(
        dict(zip(TASKS, (40, 3, 1), strict=True)), width=0.25, head_width=0.0625
    )
    runner = StepRunner(model, "nyuv2", TrainSpec(steps=1), torch.device("cpu"))
    train = NYUv2(nyu_root, "train", TASKS, augment=True, crop=CROP, seed=0)
    batch = next(batch_stream(train, BATCH, seed=0))
    benchmark.pedantic(lambda: runner(batch, 0), rounds=3, warmup_rounds=1)
    model_rate = BATCH / benchmark.stats.stats.median
    loader_rate = max(v for k, v in _rates.items() if k.startswith("loader"))
    ratio = loader_rate / model_rate
    benchmark.extra_info.update(model_samples_per_s=model_rate, loader_over_model=ratio)
    print(f"\nloader {loader_rate:.1f} samples/s, model {model_rate:.1f} samples/s, ratio {ratio:.1f}")
    assert ratio >= 2.0, f"loader delivers only {ratio:.2f}× what the model consumes"
