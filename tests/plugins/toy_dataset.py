"""A third dataset, written as a plugin from outside the core (docs/adding_a_dataset.md, tested by
tests/datasets/test_toy_dataset.py): two tasks, one of which no built-in dataset has.

``toy`` frames are random images; ``segment_semantic`` labels whether a pixel's red channel is above its
blue one (3 classes with a band of 255 = ignore), ``saliency`` is the pixel's mean brightness. Everything a
dataset declares is here: tasks and channels, the metric vocabulary (torch-free, registered on import), the
losses and the metric accumulators, the synthetic renderer and the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlprune import DATASETS
from mtlprune.engine.metrics import SegmentationMetric
from mtlprune.engine.tasks import LossFn, protocol_loss, segmentation_loss, table_entry, upsample_to
from mtlprune.vocabulary import HIGHER, LOWER, MetricName, Vocabulary, register_vocabulary

VOCABULARY = register_vocabulary(
    Vocabulary(
        dataset="toy",
        metrics={
            "segment_semantic": {"miou": HIGHER, "pixel_acc": HIGHER},
            "saliency": {"mae": LOWER, "max_err": LOWER},
        },
        delta={"segment_semantic": ("miou",), "saliency": ("mae",)},
        main={"segment_semantic": "miou", "saliency": "mae"},
        title="Toy",
        task_names={"segment_semantic": "Seg", "saliency": "Sal"},
        names={"saliency": {"mae": MetricName("MAE"), "max_err": MetricName("Max err")}},
    )
)
CLASSES = 3


def saliency_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 against the brightness map."""
    return (upsample_to(pred, target) - target).abs().mean()


class SaliencyMetric:
    """Pooled mean and largest absolute error of the brightness map."""

    def __init__(self) -> None:
        self.abs_sum, self.count, self.max_err = 0.0, 0, 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        err = (pred.detach().float() - target.float()).abs()
        self.abs_sum += float(err.sum())
        self.count += err.numel()
        self.max_err = max(self.max_err, float(err.max()))

    def compute(self) -> dict[str, float]:
        return {"mae": self.abs_sum / self.count, "max_err": self.max_err}


@DATASETS.register("toy")
class ToyDataset(Dataset):
    """Random frames rendered by :meth:`synthesize` into one ``<split>.npz`` per split."""

    tasks = ("segment_semantic", "saliency")
    task_channels: ClassVar[dict[str, int]] = {"segment_semantic": CLASSES, "saliency": 1}
    dataset_label = "toy"
    listing_name = "train.npz"
    vocabulary = VOCABULARY
    LOSSES: ClassVar[dict[str, LossFn]] = {"segment_semantic": segmentation_loss, "saliency": saliency_loss}
    METRICS: ClassVar[dict[str, Any]] = {
        "segment_semantic": lambda: SegmentationMetric(num_classes=CLASSES),
        "saliency": SaliencyMetric,
    }

    def __init__(self, root: str | Path, split: str, tasks: tuple[str, ...] = tasks, **_: Any) -> None:
        with np.load(Path(root) / f"{split}.npz") as arrays:
            self.images = torch.from_numpy(arrays["images"])
        self.tasks_used = tuple(tasks)

    @classmethod
    def losses(cls, tasks: tuple[str, ...], protocol: str, class_weights: Tensor | None = None) -> dict:
        return {t: protocol_loss(table_entry(cls.LOSSES, t, "loss", "toy"), None, protocol) for t in tasks}

    @classmethod
    def metric(cls, task: str, protocol: str, class_weights: Tensor | None = None) -> Any:
        return table_entry(cls.METRICS, task, "metric", "toy")()

    @staticmethod
    def synthesize(out: Path, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        out.mkdir(parents=True)
        for split, n in (("train", n_train), ("test", n_test)):
            images = rng.random((n, 3, height, width), dtype=np.float32)
            np.savez(out / f"{split}.npz", images=images)
        return out

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:  # no augmentation: nothing depends on the epoch
        pass

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index]
        margin = image[0] - image[2]
        labels = torch.where(margin > 0.1, 2, torch.where(margin < -0.1, 0, 1))
        labels[margin.abs() < 0.02] = 255
        out = {"input": image, "segment_semantic": labels.long(), "saliency": image.mean(0, keepdim=True)}
        return {k: v for k, v in out.items() if k == "input" or k in self.tasks_used}
