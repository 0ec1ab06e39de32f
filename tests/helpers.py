"""Small builders shared by tests: a tiny matrix on tiny synthetic data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlprune.spec import MatrixSpec, parse_matrix

TASKS3 = ["segment_semantic", "normal", "depth_zbuffer"]


def tiny_matrix_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "datasets": [
            {
                "dataset": "nyuv2",
                "tasks": TASKS3,
                "synthetic": {"n_train": 8, "n_test": 4, "height": 32, "width": 40, "seed": 0},
                "crop": [32, 32],
            }
        ],
        "archs": [{"name": "deeplab_resnet34", "width": 0.125, "head_width": 0.03125}],
        "methods": [{"name": "random"}, {"name": "magnitude"}],
        "sparsities": [0.5, 0.9],
        "seeds": [0],
        "train": {"steps": 6, "batch_size": 4, "lr": 0.003},
        "finetune": {"steps": 2, "batch_size": 4},
        "eval": {"batch_size": 4},
        # The control row (dense-finetune per setting and seed) is off here so that each test counts only
        # the cells it lists; tests/engine/test_control.py covers it.
        "controls": False,
        "runtime": {"device": "cpu"},
    }
    data.update(overrides)
    return data


# One dense stage and one cell on a one-task model: the smallest matrix the scheduler and executors run.
SMALL: dict[str, Any] = {
    "datasets": [{**tiny_matrix_dict()["datasets"][0], "tasks": ["segment_semantic"]}],
    "methods": [{"name": "magnitude"}],
    "sparsities": [0.5],
    "train": {"steps": 3, "batch_size": 4, "lr": 0.003},
    "finetune": {"steps": 1, "batch_size": 4},
    "runtime": {"device": "cpu"},
}


def tiny_matrix(**overrides: Any) -> MatrixSpec:
    return parse_matrix(tiny_matrix_dict(**overrides), "<tiny>")


def load_masks(run_dir) -> dict:
    """A cell's stored masks (masks.npz) as torch bool tensors, for comparisons in tests."""
    import torch

    from mtlprune.store.maskio import MASKS, read_masks

    return {name: torch.from_numpy(mask) for name, mask in read_masks(run_dir / MASKS).items()}


def dense_of(stages: list) -> list:
    """The dense stages of a plan (mtlprune.plan.stages.plan), in plan order."""
    return [s for s in stages if s.kind == "dense"]


def cells_of(stages: list) -> list:
    """The cells of a plan, in plan order."""
    return [s for s in stages if s.kind == "cell"]


@dataclass(frozen=True)
class Priced:
    """What the estimate needs of a stage (mtlprune.plan.estimate.Priced), made up; a plan's Stage has it."""

    run_id: str
    kind: str
    cost_key: tuple
