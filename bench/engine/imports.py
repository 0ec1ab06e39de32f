"""Reference checkpoints (AdapMTL, DiSparse, AdaShare) imported into the benchmark's model and store.

``mtlprune import-checkpoint`` reads a checkpoint that the reference code wrote, maps its state-dict keys to
ours (every key accounted for: a key of theirs with no place in our model, or a key of ours they do not
provide, is an error listing them), converts what their conventions make different, evaluates the result
under every protocol and writes an ``imported`` record (``mtlprune.store.records.ImportedResult``) with the
converted weights into the store. docs/datasets.md, "Importing reference checkpoints", has the key tables.

Conversions (all exact for the function the model computes, except where said):

- **Thresholds (AdapMTL).** An STRConv computes with Ŵ = sign(W)·ReLU(|W| − sigmoid(s)) for its component's
  shared threshold s (one for the backbone, one per head); Ŵ, in float32 as the reference computes it, is
  what we store. Each conv's copy of s must equal its component's.
- **Masks (DiSparse).** A layer pruned with ``torch.nn.utils.prune`` holds ``weight_orig`` and a 0/1
  ``weight_mask``; we store their product.
- **Input.** All three feed BGR images minus the Caffe mean (0–255 scale); our loaders feed RGB/255
  normalised with the ImageNet mean and standard deviation. The stem conv's input channels are reversed
  and scaled by 255·std, and the constant offset this leaves is folded into the stem BatchNorm's running
  mean. Exact away from the image border; within the stem's padding reach (3 pixels for the ResNet's 7×7
  stem, 1 for MobileNetV2's 3×3) the padded zeros stand for the ImageNet mean where theirs stood for the
  Caffe mean, about 1 grey level apart.
- **NYU-v2 normals.** The references read the normal PNGs with ``cv2.imread``: BGR. Ours are RGB, so the
  output channels (weight rows and biases) of the normal head's last conv of every branch are reversed.
  Taskonomy normals are read with PIL (RGB) by the references too: left as they are.
- **AdaShare's policy.** ``task<i>_logits`` choose, per task, which residual blocks run; our model runs every
  block for every task. The logits are accepted when their hard policy (argmax, as AdaShare's test-time
  sampling with ``hard_sampling``) keeps every block; a policy that skips a block is an error naming it.

Loading never runs their code: ``torch.load(weights_only=True)``; Python objects a checkpoint holds besides
tensors (AdapMTL's ``layout``, a pickled module) are rebuilt as inert stand-ins, and a pickled module's
parameters and buffers are read back from them.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlprune.engine.build import resolve_device, save_state
from mtlprune.engine.data import build_dataset
from mtlprune.engine.evaluate import evaluate
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.sparsity import sparsity_report
from mtlprune.registry import ARCHS, DATASETS
from mtlprune.spec import ArchSpec, DataSpec, EvalSpec, RuntimeSpec, canonical_json, semantic_dump
from mtlprune.store import SPEC, Store, atomic_write_json
from mtlprune.store.integrity import record_artefacts, sha256_of
from mtlprune.store.provenance import device_name, provenance, timing
from mtlprune.store.records import IMPORT_FORMATS, ImportedResult

__all__ = [
    "ARCH_FORMATS",
    "CAFFE_MEAN_BGR",
    "FORMATS",
    "INPUT_MEAN",
    "INPUT_STD",
    "CheckpointImportError",
    "ImportOutcome",
    "convert_state_dict",
    "import_checkpoint",
    "import_run_id",
    "read_checkpoint",
    "state_dict_of",
]

FORMATS = IMPORT_FORMATS
# Which of our architectures each format's model definitions match.
ARCH_FORMATS: dict[str, tuple[str, ...]] = {
    "adapmtl": ("deeplab_resnet34", "mobilenetv2"),
    "disparse": ("deeplab_resnet34",),
    "adashare": ("deeplab_resnet34",),
}
# The reference input: BGR, 0–255, minus this mean (``IMG_MEAN`` of every reference loader).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# Our loaders' input (mtlprune.datasets.base: RGB/255 normalised by the ImageNet statistics); a test checks
# these against the loaders' own constants.
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)
# Channel order of the normal maps each reference reads (NYU-v2 with cv2.imread, Taskonomy with PIL).
NORMAL_ORDER = {"nyuv2": "bgr", "taskonomy": "rgb"}
# The first conv and its BatchNorm, per architecture (our keys).
STEM = {
    "deeplab_resnet34": ("backbone.conv1", "backbone.bn1"),
    "mobilenetv2": ("backbone.features.0.0", "backbone.features.0.1"),
}
# Where each format keeps the state dict in the file it saves (besides a bare state dict).
CONTAINER_KEYS = {
    "adapmtl": ("state_dict", "model"),  # main/trainer.py save_model: {'iter', 'state_dict', 'layout', ...}
    "disparse": ("state_dict", "model"),  # train.py: torch.save(net.state_dict())
    "adashare": ("mtl-net", "state_dict", "model"),  # envs/base_env.py save: {'mtl-net': ..., 'iter', ...}
}
IMPORT_VERSION = 1
SHOWN = 12  # keys listed in an error before "and N more"


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and what did not fit."""


# ----------------------------------------------------------------------------------------------- reading


class _Stub:
    """An inert stand-in for a class a checkpoint names but ``weights_only`` does not allow: it runs no
    code of theirs and keeps what the pickle gives it (constructor arguments, state) to be read back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stub_args = args
        self._stub_state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._stub_state = state


def _stub_class(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Stub,), {"__module__": module, "__qualname__": name})


def read_checkpoint(path: str | Path) -> Any:
    """The object a checkpoint file holds, loaded with ``weights_only=True``.

    A file that needs classes ``weights_only`` refuses (AdapMTL's ``layout``, a pickled ``nn.Module``) is
    loaded again with inert stand-ins for those classes (:class:`_Stub`): their code never runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except Exception as exc:  # not a torch file at all: zip/EOF/magic-number errors
        raise CheckpointImportError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    serialization = torch.serialization
    if not hasattr(serialization, "get_unsafe_globals_in_checkpoint"):
        raise CheckpointImportError(
            f"{path}: holds Python objects besides tensors ({first_error[:200]}); loading it without running "
            "their code needs torch >= 2.5, or save its state_dict alone"
        )
    try:
        names = serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive: a legacy file, or not a torch file at all
        raise CheckpointImportError(
            f"{path}: not a readable torch checkpoint ({first_error[:200]}); a file in torch's legacy format "
            "that holds Python objects besides tensors cannot be loaded safely: save its state_dict alone"
        ) from None
    stubs = [_stub_class(name) for name in names]
    try:
        with serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointImportError(
            f"{path}: cannot be loaded safely ({type(exc).__name__}: {str(exc)[:300]}); it names {names}"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor] | None:
    """The state dict of a pickled ``nn.Module`` rebuilt as stand-ins (None when ``obj`` is not one)."""
    state = getattr(obj, "_stub_state", None) if isinstance(obj, _Stub) else None
    if not isinstance(state, Mapping) or "_parameters" not in state:
        return None
    out: dict[str, Tensor] = {}
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skipped:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        found = _module_tensors(child, f"{prefix}{name}.")
        if found is None:
            raise CheckpointImportError(f"submodule {prefix}{name} of the pickled model is not a module")
        out.update(found)
    return out


def state_dict_of(payload: Any, fmt: str, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The model's state dict inside what the file holds: the state dict itself, a pickled module, or a
    dict holding either under the format's key (AdapMTL ``state_dict``, AdaShare ``mtl-net``; ``model``
    and ``state_dict`` for any). ``module.`` prefixes of a DataParallel model are dropped."""
    candidates = [payload]
    if isinstance(payload, Mapping):
        candidates += [payload[key] for key in CONTAINER_KEYS[fmt] if key in payload]
    for candidate in candidates:
        found = dict(candidate) if _is_state_dict(candidate) else _module_tensors(candidate)
        if found:
            if all(key.startswith("module.") for key in found):
                found = {key.removeprefix("module."): value for key, value in found.items()}
            return found
    if isinstance(payload, Mapping):
        shown = sorted(str(k) for k in payload)[:SHOWN]
        what = f"a dict with keys {shown}"
    else:
        what = f"a {type(payload).__name__}"
    raise CheckpointImportError(
        f"{path}: no state dict found: it holds {what}; expected for format {fmt!r} a state dict (names → "
        f"tensors), a pickled model, or a dict holding one under {list(CONTAINER_KEYS[fmt])}"
    )


# ----------------------------------------------------------------------------------------- key mapping


@dataclass(frozen=True)
class Slot:
    """One tensor of our model and the name it has in their state dict."""

    ours: str
    theirs: str
    prunable: bool  # a conv weight (thresholded / masked in theirs)
    component: str  # backbone or head/<task>


def _mobilenet_sub(model: MTLModel, block: int) -> dict[str, str]:
    """Our → their index inside ``features.<block>.conv`` (ours: torchvision's nesting; theirs: flat)."""
    layers = model.backbone.features[block].conv  # type: ignore[union-attr,index]
    if len(layers) == 3:  # expansion 1: dw (conv, bn), pw-linear conv, bn
        return {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
    return {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def _their_backbone_key(arch: str, key: str, model: MTLModel) -> str:
    if arch == "deeplab_resnet34":
        if m := re.fullmatch(r"backbone\.layer(\d)\.0\.downsample\.(\d)\.(\w+)", key):
            return f"backbone.ds.{int(m[1]) - 1}.{m[2]}.{m[3]}"
        if m := re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(.+)", key):
            return f"backbone.blocks.{int(m[1]) - 1}.{m[2]}.{m[3]}"
        return key  # backbone.conv1.weight, backbone.bn1.*
    last = len(model.backbone.features) - 1  # type: ignore[union-attr,arg-type]
    if m := re.fullmatch(r"backbone\.features\.(\d+)\.conv\.(\d(?:\.\d)?)\.(\w+)", key):
        sub = _mobilenet_sub(model, int(m[1]))[m[2]]
        return f"backbone.features.{m[1]}.conv.{sub}.{m[3]}"
    if (m := re.fullmatch(r"backbone\.features\.(\d+)\.(\d)\.(\w+)", key)) and int(m[1]) == last:
        return f"backbone.conv.{m[2]}.{m[3]}"
    return key  # backbone.features.0.{0,1}.*


def _their_head_key(fmt: str, key: str, tasks: tuple[str, ...]) -> str:
    m = re.fullmatch(r"heads\.(\w+)\.branches\.(\d)\.(conv\d)\.(\w+)", key)
    if m is None:
        raise CheckpointImportError(f"no mapping for our head tensor {key}")
    task, branch, conv, param = m[1], int(m[2]), m[3], m[4]
    if fmt == "adapmtl":  # MTSeqModel.heads[task] = ASPPHeadNode(fc1..fc4 = rates 6, 12, 18, 24)
        return f"heads.{task}.fc{branch + 1}.{conv}.{param}"
    # SceneNet / MTL2: task<i>_fc1_c<k> for the i-th task (1-based, their config's order), k = rate index
    return f"task{tasks.index(task) + 1}_fc1_c{branch}.{conv}.{param}"


def key_table(fmt: str, arch: str, model: MTLModel) -> list[Slot]:
    """Every tensor of our model's state dict with its name in ``fmt``'s state dict."""
    if fmt not in FORMATS:
        raise CheckpointImportError(f"unknown checkpoint format {fmt!r}; allowed: {list(FORMATS)}")
    if arch not in ARCH_FORMATS[fmt]:
        raise CheckpointImportError(
            f"format {fmt!r} has no {arch} model; its reference code defines {list(ARCH_FORMATS[fmt])}"
        )
    prunable = set(model.prunable_parameters())
    slots = []
    for key in model.state_dict():
        if key.startswith("backbone."):
            theirs, component = _their_backbone_key(arch, key, model), "backbone"
        else:
            theirs, component = _their_head_key(fmt, key, model.tasks), model.component_of(key)
        slots.append(Slot(key, theirs, key in prunable, component))
    return slots


def _their_component_threshold(component: str) -> str:
    return "backbone.sparseThreshold" if component == "backbone" else f"heads.{component[5:]}.sparseThreshold"


def _listed(keys: list[str]) -> str:
    more = len(keys) - SHOWN
    return ", ".join(keys[:SHOWN]) + (f" and {more} more" if more > 0 else "")


@dataclass
class _Taken:
    """Their tensors as they are used up: what is left over at the end is an unexpected key."""

    theirs: dict[str, Tensor]
    used: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)

    def get(self, key: str, optional: bool = False) -> Tensor | None:
        if key in self.theirs:
            self.used.add(key)
            return self.theirs[key]
        if not optional:
            self.missing.append(key)
        return None


def convert_state_dict(
    theirs: Mapping[str, Tensor], fmt: str, arch: str, dataset: str, model: MTLModel
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Their state dict as ours for ``model`` (the same arch and tasks, in their head order), and a report
    of the mapping (counts, thresholds, transforms, keys that were defaulted).

    Missing or unexpected keys and shape mismatches raise :class:`CheckpointImportError` listing them.
    """
    if dataset not in NORMAL_ORDER:
        raise CheckpointImportError(
            f"no reference conventions known for dataset {dataset!r}; importable: {sorted(NORMAL_ORDER)}"
        )
    slots = key_table(fmt, arch, model)
    taken = _Taken(dict(theirs))
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    report: dict[str, Any] = {"mapped": {}, "defaulted": [], "transforms": []}
    thresholds: dict[str, Tensor] = {}
    if fmt == "adapmtl":
        for component in model.components():
            value = taken.get(_their_component_threshold(component))
            if value is not None:
                thresholds[component] = value.detach().to(torch.float32).reshape(())
        report["thresholds"] = {c: float(torch.sigmoid(s)) for c, s in thresholds.items()}
        report["transforms"].append("conv weights soft-thresholded: sign(W)·relu(|W| − sigmoid(s))")
    masked = 0
    wrong_shape = []
    for slot in slots:
        target = ours[slot.ours]
        if slot.ours.endswith("num_batches_tracked"):
            value = taken.get(slot.theirs, optional=True)
            if value is None:  # carries nothing an evaluation uses; older checkpoints lack it
                report["defaulted"].append(slot.theirs)
                value = torch.zeros_like(target)
        elif slot.prunable and fmt == "disparse" and slot.theirs not in taken.theirs:
            base = slot.theirs.removesuffix("weight")
            orig, mask = taken.get(base + "weight_orig"), taken.get(base + "weight_mask")
            if orig is None or mask is None:
                continue
            if not bool(((mask == 0) | (mask == 1)).all()) or mask.shape != orig.shape:
                raise CheckpointImportError(
                    f"{base}weight_mask is not a 0/1 mask of {base}weight_orig's shape"
                )
            value, masked = orig * mask, masked + 1
        else:
            value = taken.get(slot.theirs)
            if value is None:
                continue
            if slot.prunable and fmt == "adapmtl":
                value = _soft_threshold(value, slot, taken, thresholds)
        if tuple(value.shape) != tuple(target.shape):
            wrong_shape.append(f"{slot.theirs} {tuple(value.shape)} → {slot.ours} {tuple(target.shape)}")
            continue
        out[slot.ours] = value.detach().to(target.dtype).clone()
        report["mapped"][slot.theirs] = slot.ours
    if masked:
        report["transforms"].append(f"{masked} weight_orig·weight_mask products (torch.nn.utils.prune)")
    if fmt == "adashare":
        _check_policy(taken, len(model.tasks), report)
    unexpected = sorted(set(taken.theirs) - taken.used)
    problems = []
    if taken.missing:
        problems.append(f"missing keys: {_listed(sorted(set(taken.missing)))}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches (theirs → ours): {_listed(wrong_shape)}")
    if problems:
        raise CheckpointImportError(
            f"the {fmt} state dict does not match a {arch} model for tasks {list(model.tasks)} "
            f"(--tasks in the checkpoint's head order; --width/--head-width): " + "; ".join(problems)
        )
    _fold_input_convention(out, arch, report)
    if NORMAL_ORDER[dataset] == "bgr" and "normal" in model.tasks:
        _reverse_normal_channels(out, model, report)
    report["counts"] = {"theirs": len(theirs), "ours": len(out), "defaulted": len(report["defaulted"])}
    return out, report


def _soft_threshold(weight: Tensor, slot: Slot, taken: _Taken, thresholds: dict[str, Tensor]) -> Tensor:
    """Ŵ = sign(W)·ReLU(|W| − sigmoid(s)) in float32 as the reference's STRConv, s its component's."""
    prefix = slot.theirs.removesuffix("weight")
    own = taken.get(prefix + "sparseThreshold")
    shared = thresholds.get(slot.component)
    if own is None or shared is None:
        return weight
    if not torch.equal(own.detach().to(torch.float32).reshape(()), shared):
        raise CheckpointImportError(
            f"{prefix}sparseThreshold = {float(own)} differs from its component's "
            f"{_their_component_threshold(slot.component)} = {float(shared)}: AdapMTL shares one threshold "
            "per component"
        )
    w = weight.detach().to(torch.float32)
    return torch.sign(w) * torch.relu(torch.abs(w) - torch.sigmoid(shared))


def _check_policy(taken: _Taken, n_tasks: int, report: dict[str, Any]) -> None:
    """AdaShare's block-selection logits: accepted when every task's hard policy runs every block."""
    skipped = []
    for t in range(1, n_tasks + 1):
        logits = taken.get(f"task{t}_logits", optional=True)
        if logits is None:
            continue
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise CheckpointImportError(
                f"task{t}_logits has shape {tuple(logits.shape)}, expected (blocks, 2)"
            )
        # test_sample_policy(hard_sampling=True): argmax; column 0 = run the block, 1 = skip it.
        dropped = [i for i, row in enumerate(logits) if int(torch.argmax(row)) == 1]
        if dropped:
            skipped.append(f"task{t} skips blocks {dropped}")
        report.setdefault("policy", {})[f"task{t}"] = "every block"
    if skipped:
        raise CheckpointImportError(
            "the AdaShare policy is task-specific (" + "; ".join(skipped) + "): the benchmark's model runs "
            "every block for every task and cannot represent it; only an all-blocks policy imports"
        )


def _fold_input_convention(out: dict[str, Tensor], arch: str, report: dict[str, Any]) -> None:
    """Their stem expects x' = BGR·1 − Caffe mean (0–255); ours gets x = (RGB/255 − m)/s. With
    RGB_c = 255(s_c x_c + m_c): W_ours[:, c] = 255 s_c W[:, 2−c], and the constant
    Σ_c (255 m_c − mean_c) Σ_hw W[:, 2−c] moves into the stem BN's running mean (exact in the interior)."""
    conv, bn = STEM[arch]
    w = out[f"{conv}.weight"].to(torch.float64)
    std = torch.tensor(INPUT_STD, dtype=torch.float64)
    mean = torch.tensor(INPUT_MEAN, dtype=torch.float64)
    caffe_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.float64)
    w_rgb = w.flip(1)  # their input channel 2 − c is our channel c
    offset = ((w_rgb.sum(dim=(2, 3))) * (255.0 * mean - caffe_rgb)).sum(dim=1)
    out[f"{conv}.weight"] = (w_rgb * (255.0 * std).view(1, 3, 1, 1)).to(torch.float32)
    running = out[f"{bn}.running_mean"].to(torch.float64)
    out[f"{bn}.running_mean"] = (running - offset).to(torch.float32)
    report["transforms"].append(
        f"input BGR − Caffe mean → RGB/255 − ImageNet mean / std: {conv}.weight channels reversed and "
        f"scaled by 255·std; {bn}.running_mean shifted by the mean difference"
    )


def _reverse_normal_channels(out: dict[str, Tensor], model: MTLModel, report: dict[str, Any]) -> None:
    """BGR-ordered normal predictions → RGB: reverse the output channels of each branch's last conv."""
    branches = len(model.heads["normal"].branches)  # type: ignore[union-attr,arg-type]
    for k in range(branches):
        for param in ("weight", "bias"):
            key = f"heads.normal.branches.{k}.conv3.{param}"
            out[key] = out[key].flip(0).contiguous()
    report["transforms"].append("normal head output channels BGR → RGB (conv3 weight rows and biases)")


# --------------------------------------------------------------------------------------------- importing


@dataclass
class ImportOutcome:
    """What an import produced: its record, where it lives, and whether it was already in the store."""

    run_id: str
    result: ImportedResult
    run_dir: Path
    existed: bool


def import_run_id(fmt: str, checkpoint_sha256: str, arch: ArchSpec, data: DataSpec) -> str:
    """Content hash of what an import's numbers depend on: the format, the file's bytes, the model, the data
    (a disk dataset by its fingerprint) and the protocols it is evaluated under."""
    payload = {
        "kind": "imported",
        "version": IMPORT_VERSION,
        "format": fmt,
        "checkpoint_sha256": checkpoint_sha256,
        "arch": semantic_dump(arch),
        "data": semantic_dump(data),
        "protocols": list(_protocols()),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def _with_fingerprint(data: DataSpec, store: Store) -> DataSpec:
    """``data`` with a disk root's fingerprint and resolved root filled in (synthetic data as it is)."""
    if data.source != "disk":
        return data
    from mtlprune.plan.fingerprint import data_fingerprint

    found = data_fingerprint(data.dataset, data.resolved_root(), store.root)
    if data.fingerprint is not None and data.fingerprint != found.digest:
        raise ValueError(
            f"the {data.dataset} data at {found.root} has fingerprint {found.digest}, not the pinned "
            f"{data.fingerprint}"
        )
    return data.model_copy(update={"fingerprint": found.digest, "root": str(found.root)})


def _protocols() -> tuple[str, ...]:
    from mtlprune.vocabulary import PROTOCOLS

    return tuple(PROTOCOLS)


def import_checkpoint(
    path: str | Path,
    fmt: str,
    arch: ArchSpec,
    data: DataSpec,
    store: Store,
    device: str = "auto",
) -> ImportOutcome:
    """Import ``path`` (a ``fmt`` checkpoint) into ``arch`` for ``data``'s tasks, evaluate it on the test
    split under every protocol, and write the ``imported`` record into ``store`` (or return the stored one).

    Data on disk is identified by its content fingerprint (``mtlprune.plan.fingerprint``), computed here; a
    pinned ``data.fingerprint`` must match it.
    """
    path = Path(path)
    start = time.time()
    data = _with_fingerprint(data, store)
    digest = sha256_of(path) if path.is_file() else None
    if digest is None:
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    run_id = import_run_id(fmt, digest, arch, data)
    run_dir = store.run_dir(run_id)
    if store.is_done(run_id):
        return ImportOutcome(run_id, store.result(run_id), run_dir, existed=True)  # type: ignore[arg-type]
    channels = DATASETS.get(data.dataset).task_channels
    model = ARCHS.get(arch.name)(
        {t: channels[t] for t in data.tasks}, width=arch.width, head_width=arch.head_width
    )
    theirs = state_dict_of(read_checkpoint(path), fmt, path)
    converted, report = convert_state_dict(theirs, fmt, arch.name, data.dataset, model)
    model.load_state_dict(converted, strict=True)
    torch_device = resolve_device(RuntimeSpec(device=device))
    metrics: dict[str, dict[str, float | None]] = {}
    test_count = 0
    for protocol in _protocols():
        test_set = build_dataset(data, store.root, "test", protocol=protocol)
        test_count = len(test_set)
        batch = EvalSpec(protocol=protocol).effective_batch_size
        values = evaluate(model, test_set, batch, torch_device, dataset=data.dataset, protocol=protocol)
        metrics[protocol] = {k: (None if v is None or math.isnan(v) else float(v)) for k, v in values.items()}
    model.cpu()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_state(run_dir / "model.pt", model.state_dict())
    spec = {
        "stage": "imported",
        "format": fmt,
        "checkpoint": {"name": path.name, "sha256": digest, "bytes": path.stat().st_size},
        "arch": arch.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "protocols": list(_protocols()),
        "version": IMPORT_VERSION,
    }
    atomic_write_json(run_dir / SPEC, {"run_id": run_id, "spec": spec})
    end = time.time()
    result = ImportedResult(
        run_id=run_id,
        metrics=metrics["standard"],
        protocol_metrics=metrics,
        sparsity=sparsity_report(model),
        steps_total=0,
        splits={"train": 0, "val": 0, "test": test_count},
        wall_s=end - start,
        device=str(torch_device),
        provenance={**provenance(device_name(str(torch_device))), **timing(start, end)},
        source_format=fmt,  # type: ignore[arg-type]
        source_sha256=digest,
        source_bytes=path.stat().st_size,
        source_name=path.name,
        dataset=data.dataset,
        tasks=list(data.tasks),
        arch=arch.name,
        width=arch.width,
        head_width=arch.head_width,
        key_mapping={**report, "mapped": len(report["mapped"]), "format": fmt},
    )
    result = result.model_copy(update={"files": record_artefacts(run_dir)})
    store.write_result(run_id, result)
    return ImportOutcome(run_id, result, run_dir, existed=False)
