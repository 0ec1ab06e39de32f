"""What running a matrix needs, checked without touching any data: data roots, model sizes, compute."""

from __future__ import annotations

import torch

from mtlprune.engine.build import (
    build_model,
)
from mtlprune.registry import DATASETS
from mtlprune.spec import MatrixSpec


def requirements(matrix: MatrixSpec) -> list[str]:
    """What running ``matrix`` needs, checked without touching any data: roots, model sizes, compute."""
    lines: list[str] = []
    seen: set[str] = set()
    for data in matrix.datasets:
        if data.source == "synthetic":
            s = data.synthetic
            lines.append(
                f"data {data.dataset}: synthetic, rendered into the store on first use "
                f"({s.n_train} train + {s.n_test} test frames of {s.height}×{s.width})"
            )
            continue
        if data.root in seen:
            continue
        seen.add(str(data.root))
        listing = DATASETS.get(data.dataset).listing_name
        try:
            root = data.resolved_root()
        except ValueError as exc:
            lines.append(f"data {data.dataset}: MISSING: {exc}")
            continue
        if (root / listing).is_file():
            lines.append(f"data {data.dataset}: {root} (found {listing})")
        else:
            lines.append(
                f"data {data.dataset}: MISSING: {root / listing} does not exist; see docs/datasets.md, then "
                f"check it with: mtlprune data verify --dataset {data.dataset} --root {root}"
            )
    dense = matrix.dense_stages()
    for stage in {(d.arch.name, d.arch.width, d.arch.head_width, d.data.tasks): d for d in dense}.values():
        with torch.device("meta"):  # shapes only: no memory, no time, even for full-width models
            model = build_model(stage)
        params = sum(p.numel() for p in model.parameters())
        prunable = sum(p.numel() for p in model.prunable_parameters().values())
        lines.append(
            f"model {stage.arch.name} width {stage.arch.width:g}/{stage.arch.head_width:g} "
            f"({', '.join(stage.data.tasks)}): {params / 1e6:.2f}M parameters, {prunable / 1e6:.2f}M prunable"
        )
    cells, train, finetune = matrix.expand(), matrix.train, matrix.finetune
    lines.append(
        f"compute: {len(dense)} dense stage(s) × {train.steps} steps (batch {train.batch_size}), then "
        f"{len(cells)} cell(s), each within its method's budget (finetune {finetune.steps} steps, batch "
        f"{finetune.batch_size}); protocol {matrix.eval.protocol}; device {matrix.runtime.device}"
    )
    return lines
