"""A fake result store in the exact layout the engine writes, built in milliseconds and without torch.

`mtlprune.engine.dense.run_dense` / `mtlprune.engine.cell.run_cell` write ``<store>/runs/<run_id>/`` with
``spec.json`` (``run_id``, the full ``spec`` dump, its ``identity`` and, for a cell, ``dense_run_id``),
``status.json`` (``running`` with host/pid/started, then ``done`` with ``finished``, or ``failed`` with
``error`` and ``traceback``), ``log.jsonl`` and, last, ``result.json`` (typed records,
mtlprune.store.records); `mtlprune run` adds the manifest. This module writes the same files with made-up
but plausible numbers (accuracy falls with sparsity, faster for weaker methods; per-component sparsities
that pool exactly to the achieved sparsity), so report, figure and performance tests can use hundreds of
cells. Failed, running and missing (planned, never started) cells are placed at fixed positions so tests can
name them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from mtlprune.store import SPEC, Store, atomic_write_json
from mtlprune.store.manifest import MANIFEST_FORMAT, save_manifest
from mtlprune.store.maskio import MASKS, TASK_MASKS, write_masks, write_task_masks
from mtlprune.store.records import CellResult, DenseResult

TASKS3 = ("segment_semantic", "normal", "depth_zbuffer")


# The dense-finetune control: the dense model finetuned for the cells' budget, unpruned (target 0.0).
def dense_result(run_id: str, metrics: dict[str, float], **fields: Any) -> DenseResult:
    """A valid dense-stage record with plausible defaults for what a test does not care about."""
    # files={}: a fake result stands on no checkpoint (the engine records the real ones it writes)
    defaults: dict[str, Any] = {
        "sparsity": {"achieved_sparsity": 0.0},
        "steps_total": 200,
        "wall_s": 42.0,
        "files": {},
    }
    return DenseResult(run_id=run_id, metrics=metrics, **{**defaults, **fields})


def cell_result(run_id: str, dense_run_id: str, metrics: dict[str, float], **fields: Any) -> CellResult:
    """A valid cell record with plausible defaults for what a test does not care about."""
    defaults: dict[str, Any] = {
        "sparsity": {"achieved_sparsity": 0.5},
        "steps_total": 300,
        "steps_method": 100,
        "starts_from": "dense",
        "wall_s": 12.5,
        "files": {},
    }
    return CellResult(run_id=run_id, dense_run_id=dense_run_id, metrics=metrics, **{**defaults, **fields})


CONTROL = "dense-finetune"
DEFAULT_METHODS = ("magnitude", "random", "gmp(frequency=10)", "snip", "adapmtl", "disparse-static")
# Dense metrics per architecture (NYU-v2 vocabulary; mIoU/pixel accuracy as fractions).
DENSE_METRICS = {
    "deeplab_resnet34": {
        "segment_semantic.miou": 0.30,
        "segment_semantic.pixel_acc": 0.62,
        "normal.mean": 16.5,
        "normal.median": 14.2,
        "normal.within_11_25": 39.0,
        "normal.within_22_5": 67.0,
        "normal.within_30": 78.0,
        "depth_zbuffer.abs_err": 0.55,
        "depth_zbuffer.rel_err": 0.21,
        "depth_zbuffer.delta_1_25": 70.0,
        "depth_zbuffer.delta_1_25_2": 91.0,
        "depth_zbuffer.delta_1_25_3": 97.0,
    },
    "mobilenetv2": {
        "segment_semantic.miou": 0.20,
        "segment_semantic.pixel_acc": 0.49,
        "normal.mean": 17.9,
        "normal.median": 16.0,
        "normal.within_11_25": 29.0,
        "normal.within_22_5": 72.0,
        "normal.within_30": 87.0,
        "depth_zbuffer.abs_err": 0.57,
        "depth_zbuffer.rel_err": 0.22,
        "depth_zbuffer.delta_1_25": 62.0,
        "depth_zbuffer.delta_1_25_2": 89.0,
        "depth_zbuffer.delta_1_25_3": 97.0,
    },
}
LOWER_IS_BETTER = {"normal.mean", "normal.median", "depth_zbuffer.abs_err", "depth_zbuffer.rel_err"}
# How fast a method loses accuracy with sparsity (quality = 1 − strength · target⁴) and how much of the
# target its heads take relative to the backbone (1: uniform; < 1: global ranking spares the small heads).
STRENGTH = {
    "random": 0.25,
    "snip": 0.12,
    "magnitude": 0.09,
    "gmp": 0.07,
    "disparse-static": 0.05,
    "adapmtl": 0.02,
}
HEAD_RATIO = {
    "random": 1.0,
    "snip": 0.6,
    "magnitude": 0.45,
    "gmp": 0.5,
    "disparse-static": 0.7,
    "adapmtl": 0.85,
}
# Parameter shares of the prunable weights: backbone, then each head.
BACKBONE_SHARE = 0.7
HEAD_SHARE = 0.1
LOG_STEPS = 20  # records per training log (log_every 10)
# What the engine (mtlprune.engine.lifecycle) records per stage under result.json "provenance"
# (mtlprune.store.provenance + timing).
RUN_PROVENANCE = {
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "dirty": False,
    "packages": {"python": "3.11.2", "torch": "2.14.1", "numpy": "2.0.0", "pandas": "2.2.0"},
    "hostname": "gpu-node-1",
    "platform": "Linux-fake",
    "device": "cuda:0 (NVIDIA H100 80GB HBM3)",
    "slurm": {"job_id": None, "array_job_id": None, "array_task_id": None},
    "notes": {},
    "start": "2025-01-01T00:00:00.000+00:00",
    "end": "2025-01-01T00:00:12.500+00:00",
    "wall_s": 12.5,
}
# What mtlprune.store.manifest records when the matrix is planned (mtlprune.store.provenance + command and
# time).
FAKE_PROVENANCE = {
    **{k: v for k, v in RUN_PROVENANCE.items() if k not in ("start", "end", "wall_s", "device")},
    "hostname": "login-node",
    "device": None,
    "command": "mtlprune run configs/fake.yaml",
    "written": "2025-01-01T00:00:00Z",
}


@dataclass
class FakeStore:
    """What was written: the store root, the matrix name and every cell with its fate."""

    root: Path
    name: str
    cells: list[dict[str, Any]] = field(default_factory=list)
    dense: list[dict[str, Any]] = field(default_factory=list)

    def ids(self, status: str) -> list[str]:
        return [c["run_id"] for c in self.cells if c["status"] == status]


def _method(label: str) -> dict[str, Any]:
    """``gmp(frequency=10)`` → ``{"name": "gmp", "params": {"frequency": 10}}`` (the spec's method)."""
    if "(" not in label:
        return {"name": label, "params": {}}
    name, rest = label.split("(", 1)
    params = {}
    for item in rest.rstrip(")").split(","):
        key, value = item.split("=", 1)
        params[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return {"name": name, "params": params}


def _train(steps: int, lr: float = 0.001) -> dict[str, Any]:
    return {
        "batch_size": 4,
        "betas": [0.5, 0.999],
        "lr": lr,
        "lr_gamma": 0.5,
        "lr_schedule": "step",
        "lr_step": None,
        "momentum": 0.9,
        "optimizer": "adam",
        "rewind_step": None,
        "steps": steps,
        "task_weights": None,
        "weight_decay": 0.0001,
    }


def _data(dataset: str, tasks: Sequence[str]) -> dict[str, Any]:
    return {
        "crop": [32, 32],
        "dataset": dataset,
        "flip": True,
        "root": None,
        "scale": [0.5, 1.5],
        "source": "synthetic",
        "split_seed": 0,
        "synthetic": {"height": 32, "n_test": 4, "n_train": 8, "seed": 0, "width": 40},
        "tasks": list(tasks),
        "val_fraction": 0.0,
    }


def _arch(name: str) -> dict[str, Any]:
    return {
        "head_width": 0.03125,
        "name": name,
        "pretrained": None,
        "pretrained_sha256": None,
        "width": 0.125,
    }


EVAL = {"batch_size": 4, "protocol": "standard", "selection": "last", "val_every": 50}


def _run_id(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _strength(method: str) -> float:
    base = method.split("(", 1)[0]
    return STRENGTH.get(base, 0.03 + (zlib.crc32(base.encode()) % 10) / 100)


def _cell_metrics(arch: str, method: str, target: float, seed: int) -> dict[str, float]:
    rng = random.Random(zlib.crc32(f"{arch}|{method}|{target}|{seed}".encode()))
    quality = max(0.05, 1.0 - _strength(method) * target**4 + rng.gauss(0.0, 0.008))
    out = {}
    for metric, value in DENSE_METRICS[arch].items():
        out[metric] = value / quality if metric in LOWER_IS_BETTER else value * quality
    return out


def _sparsity(method: str, target: float, tasks: Sequence[str], seed: int) -> dict[str, float]:
    """Per-component sparsities that pool to ``target`` (shares BACKBONE_SHARE, HEAD_SHARE each)."""
    ratio = HEAD_RATIO.get(method.split("(", 1)[0], 0.8)
    rng = random.Random(zlib.crc32(f"{method}|{target}|{seed}".encode()))
    heads = {
        t: min(0.99, target * ratio * (1.0 + 0.05 * (i - 1)) + rng.uniform(-0.01, 0.01))
        for i, t in enumerate(tasks)
    }
    head_total = sum(HEAD_SHARE * s for s in heads.values())
    total_share = BACKBONE_SHARE + HEAD_SHARE * len(tasks)
    backbone = (target * total_share - head_total) / BACKBONE_SHARE
    if backbone > 0.995:  # the backbone cannot be more than fully pruned: the heads take the rest
        backbone = 0.995
        scale = (target * total_share - BACKBONE_SHARE * backbone) / head_total
        heads = {t: s * scale for t, s in heads.items()}
    out = {
        "achieved_sparsity": target,
        "requested_sparsity": target,
        "sparsity_gap": 0.0,
        "prunable_params": 572440,
        "prunable_nonzero": round(572440 * (1 - target)),
        "params_total": 575512,
        "params_nonzero": round(575512 * (1 - target)),
        "sparsity.all_params": target * 572440 / 575512,
        "sparsity.backbone": backbone,
    }
    for task, s in heads.items():
        out[f"sparsity.head.{task}"] = s
        out[f"sparsity.path.{task}"] = (BACKBONE_SHARE * backbone + HEAD_SHARE * s) / (
            BACKBONE_SHARE + HEAD_SHARE
        )
    return out


def _log(method: str, target: float, tasks: Sequence[str], sparsity: dict[str, float], seed: int) -> str:
    """log.jsonl text: one record per 10 steps; pruning-while-training methods log their sparsity."""
    base = method.split("(", 1)[0]
    rng = random.Random(zlib.crc32(f"log|{method}|{target}|{seed}".encode()))
    phase = "finetune" if base in ("magnitude", "random", "disparse-static", "snip") else "train"
    lines = []
    if base == "snip":
        lines.append({"phase": "prune", "snip.collapsed_layers": 0})
    for k in range(LOG_STEPS):
        step = 10 * k
        ramp = min(1.0, (k + 1) / (0.75 * LOG_STEPS))
        floor = 0.3 + 0.8 * _strength(method) * target  # weaker methods end at a higher loss
        losses = {
            t: (1.5 + i) * math.exp(-k / 12) + floor + rng.uniform(0, 0.05) for i, t in enumerate(tasks)
        }
        record: dict[str, Any] = {"phase": phase, "step": step, "lr": 0.001}
        record.update({f"loss.{t}": v for t, v in losses.items()})
        record["loss"] = sum(losses.values())
        if base == "gmp":
            record["gmp.sparsity"] = target * (1 - (1 - ramp) ** 3)
            record["gmp.achieved"] = record["gmp.sparsity"]
        if base == "adapmtl":
            record["adapmtl.sparsity"] = target * ramp
            record["adapmtl.sparsity.backbone"] = sparsity["sparsity.backbone"] * ramp
            for t in tasks:
                record[f"adapmtl.sparsity.head.{t}"] = sparsity[f"sparsity.head.{t}"] * ramp
                record[f"adapmtl.threshold.head.{t}"] = 0.01 * ramp * (1 + 0.2 * tasks.index(t))
            record["adapmtl.threshold.backbone"] = 0.015 * ramp
        lines.append(record)
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)


def _masks(tasks: Sequence[str], sparsity: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Small keep-masks at the cell's component sparsities (4 backbone layers, 2 layers per head)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, shape in enumerate([(8, 3, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3)]):
        out[f"backbone.layer{i}.conv.weight"] = rng.random(shape) >= sparsity["sparsity.backbone"]
    for t in tasks:
        for j, shape in enumerate([(16, 32, 3, 3), (4, 16, 1, 1)]):
            out[f"heads.{t}.conv{j}.weight"] = rng.random(shape) >= sparsity[f"sparsity.head.{t}"]
    return out


def build_fake_store(
    root: str | Path,
    *,
    name: str = "fake",
    archs: Sequence[str] = ("deeplab_resnet34", "mobilenetv2"),
    methods: Sequence[str] = DEFAULT_METHODS,
    targets: Sequence[float] = (0.5, 0.7, 0.9),
    seeds: Sequence[int] = (0, 1),
    tasks: Sequence[str] = TASKS3,
    failed: Sequence[int] = (),
    running: Sequence[int] = (),
    missing: Sequence[int] = (),
    logs: bool = True,
    masks: bool = False,
    manifest: bool = True,
    control: bool = False,
) -> FakeStore:
    """Write a store of archs × seeds × methods × targets cells (runner order) on NYU-v2.

    ``failed`` / ``running`` / ``missing`` are cell indices (in that order) whose stage failed with an
    error, is still running, or was planned (in the manifest) but never started. ``masks`` writes
    ``masks.npz`` for every done cell (and ``task_masks.npz`` for ``disparse-*``). ``control`` adds, per
    (arch, seed), a cell of the ``dense-finetune`` control at target 0.0, indexed after all the other
    cells (so their indices keep their meaning), and writes ``"control_run_id"`` (that control cell's
    run id) at the top level of every other cell's spec.json, as the runner does.
    """
    root = Path(root)
    store = FakeStore(root=root, name=name)
    records = Store(root)  # writes the typed result and status records, as the engine does
    dataset = "nyuv2"
    spec_cells = []
    train, finetune = _train(200, 0.003), _train(100)
    controls: dict[tuple[str, int], str] = {}
    control_cells: list[tuple[dict[str, Any], str, str, int, str, float]] = []
    for arch, seed in product(archs, seeds):
        dense_spec = {
            "arch": _arch(arch),
            "data": _data(dataset, tasks),
            "eval": EVAL,
            "schema_version": 2,
            "seed": seed,
            "stage": "dense",
            "train": train,
        }
        dense_id = _run_id(dense_spec)
        run_dir = root / "runs" / dense_id
        atomic_write_json(run_dir / SPEC, {"run_id": dense_id, "spec": dense_spec, "identity": dense_spec})
        metrics = dict(DENSE_METRICS[arch])
        records.write_result(
            dense_id,
            dense_result(
                dense_id,
                metrics,
                sparsity=_sparsity("random", 0.0, tasks, seed) | {"achieved_sparsity": 0.0},
                costs={"flops_dense": 36086416, "flops_sparse": 36086416, "input_hw": [32, 40]},
                rewind_step=1,
                selection={"rule": "last", "selected_step": 199},
                splits={"train": 8, "val": 0, "test": 4},
                device="cuda",
                provenance=RUN_PROVENANCE,
            ),
        )
        records.write_status(dense_id, status="done", finished=1.7e9)
        store.dense.append(
            {"run_id": dense_id, "dataset": dataset, "tasks": list(tasks), "arch": arch, "seed": seed}
        )
        for method, target in product(methods, targets):
            cell_spec = {
                **{k: v for k, v in dense_spec.items() if k != "train"},
                "stage": "cell",
                "train": train,
                "finetune": finetune,
                "method": _method(method),
                "target_sparsity": target,
            }
            spec_cells.append((cell_spec, dense_id, arch, seed, method, target))
        if control:
            control_spec = {**spec_cells[-1][0], "method": _method(CONTROL), "target_sparsity": 0.0}
            controls[(arch, seed)] = _run_id(control_spec)
            control_cells.append((control_spec, dense_id, arch, seed, CONTROL, 0.0))
    spec_cells += control_cells
    for index, (cell_spec, dense_id, arch, seed, method, target) in enumerate(spec_cells):
        run_id = _run_id(cell_spec)
        status = (
            "failed"
            if index in failed
            else "running"
            if index in running
            else "missing"
            if index in missing
            else "done"
        )
        store.cells.append(
            {
                "run_id": run_id,
                "dense_run_id": dense_id,
                "dataset": dataset,
                "tasks": list(tasks),
                "arch": arch,
                "width": 0.125,
                "head_width": 0.03125,
                "method": method,
                "method_name": method.split("(", 1)[0],
                "target": target,
                "seed": seed,
                "protocol": "standard",
                "status": status,
            }
        )
        if status == "missing":
            continue
        run_dir = root / "runs" / run_id
        payload: dict[str, Any] = {
            "run_id": run_id,
            "spec": cell_spec,
            "identity": cell_spec,
            "dense_run_id": dense_id,
        }
        if controls and method != CONTROL:
            payload["control_run_id"] = controls[(arch, seed)]
        atomic_write_json(run_dir / SPEC, payload)
        sparsity = _sparsity(method, target, tasks, seed)
        if logs:
            (run_dir / "log.jsonl").write_text(_log(method, target, tasks, sparsity, seed), encoding="utf-8")
        if status == "failed":
            error = f"RuntimeError: {method}: sparsity 0.41 misses target {target} (fake failure {index})"
            records.write_status(
                run_id, status="failed", error=error, traceback=f"Traceback ...\n{error}\n", finished=1.7e9
            )
            continue
        if status == "running":
            records.write_status(run_id, status="running", host="fake-host", pid=1, started=1.7e9)
            continue
        result = cell_result(
            run_id,
            dense_id,
            _cell_metrics(arch, method, target, seed),
            sparsity=sparsity,
            costs={
                "flops_dense": 36086416,
                "flops_sparse": round(36086416 * (1 - 0.9 * target)),
                "input_hw": [32, 40],
            },
            selection={"rule": "last", "selected_step": 99},
            splits={"train": 8, "val": 0, "test": 4},
            wall_s=12.5 + seed,
            device="cuda",
            provenance=RUN_PROVENANCE,
        )
        if masks:
            cell_masks = _masks(tasks, sparsity, index)
            write_masks(run_dir / MASKS, cell_masks)
            if method.startswith("disparse"):
                rng = np.random.default_rng(index)
                own = {t: {n: m | (rng.random(m.shape) < 0.1) for n, m in cell_masks.items()} for t in tasks}
                write_task_masks(run_dir / TASK_MASKS, own)
        records.write_result(run_id, result)
        records.write_status(run_id, status="done", finished=1.7e9)
    if manifest:
        matrix_spec = {
            "name": name,
            "datasets": [_data(dataset, tasks)],
            "archs": [_arch(a) for a in archs],
            "methods": [_method(m) for m in methods],
            "sparsities": list(targets),
            "seeds": list(seeds),
            "train": train,
            "finetune": finetune,
            "eval": EVAL,
            "runtime": {"device": "cuda", "log_every": 10},
        }
        payload = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "spec": matrix_spec,
            "dense": store.dense,
            "cells": [{k: v for k, v in c.items() if k != "status"} for c in store.cells],
            "provenance": FAKE_PROVENANCE,
        }
        save_manifest(root, payload)
    return store


def write_config(path: str | Path, name: str) -> Path:
    """A config file whose only key the report reads is ``name`` (the rest need not validate)."""
    path = Path(path)
    path.write_text(f"# fake matrix for report tests\nname: {name}\ndatasets: []\n", encoding="utf-8")
    return path
