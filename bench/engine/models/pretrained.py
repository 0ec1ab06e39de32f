"""Backbone weights from a local checkpoint the user names; nothing is ever downloaded.

The references train from scratch; this is an opt-in for users who have a torchvision
ImageNet checkpoint on disk. Our backbones use torchvision's key names (ResNet: ``conv1``, ``layer1.0``, …;
MobileNetV2: ``features.<i>...``, as the references do), so such a file loads once its classifier is dropped.
A backbone whose checkpoints come in other formats maps them itself: a ``convert_pretrained(state)`` method
returns the state under its own key names and the keys it dropped (the ViT encoder reads MultiMAE/MultiViT
and timm/MAE files, mtlprune.engine.models.vit). Loading is strict: any missing, unexpected or mis-shaped key
is an error, never a silent partial load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision ResNet / MobileNetV2 heads
WRAPPER_KEYS = ("state_dict", "model")
MAX_LISTED = 5


def _describe(keys: list[str], show: Callable[[str], str]) -> str:
    listed = ", ".join(show(k) for k in keys[:MAX_LISTED])
    more = f" (and {len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return listed + more


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (raw, or under ``state_dict``/``model``), ``module.`` stripped."""
    path = Path(path)
    where = f"pretrained weights {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a loadable checkpoint"
        first_line = (str(e).strip().splitlines() or [""])[0]  # weights_only errors run to paragraphs
        raise ValueError(f"{where} could not be read: {type(e).__name__}: {first_line}") from e
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{where} contain no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{where}: entries that are not tensors: {bad[:MAX_LISTED]}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a local checkpoint into `backbone` strictly; return the keys that were dropped (classifier,
    or what the backbone's ``convert_pretrained`` dropped).

    Raises FileNotFoundError for a missing file and ValueError for an unreadable one or any key mismatch;
    the message names the file and the first offending keys with expected vs found shapes.
    """
    state = read_state_dict(path)
    expected = backbone.state_dict()
    convert: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], list[str]]] | None = getattr(
        backbone, "convert_pretrained", None
    )
    if convert is not None:
        try:
            state, dropped = convert(state)
        except ValueError as e:
            raise ValueError(f"pretrained weights {str(path)!r}: {e}") from e
    else:
        dropped = [k for k in state if k.startswith(CLASSIFIER_PREFIXES) and k not in expected]
        for k in dropped:
            del state[k]

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(
            "missing keys: " + _describe(missing, lambda k: f"{k} (expected {_shape(expected[k])}, absent)")
        )
    if unexpected:
        problems.append(
            "unexpected keys: " + _describe(unexpected, lambda k: f"{k} (found {_shape(state[k])})")
        )
    if mismatched:
        problems.append(
            "shape mismatches: "
            + _describe(
                mismatched, lambda k: f"{k} (expected {_shape(expected[k])}, found {_shape(state[k])})"
            )
        )
    if problems:
        raise ValueError(
            f"pretrained weights {str(path)!r} do not fit the {type(backbone).__name__} backbone; "
            + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=True)
    return dropped
