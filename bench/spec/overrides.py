"""Command-line overrides of a matrix config: ``key.path=value`` applied to the YAML before validation.

A key path is the one the config errors print (``train.steps``, ``datasets[0].root``,
``methods[1].params.ramp_fraction``); the value is read as YAML (``0.9``, ``[0.5, 0.9]``, ``null``,
``{lr: 0.1}``). Overrides are applied in order to the parsed mapping, so the result is validated exactly like
a config file and a bad value gets the same key-path error.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from mtlprune.spec.load import ConfigError, DuplicateKeyError, load_yaml

_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*")
_PART = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


def parse_key_path(path: str, text: str) -> list[str | int]:
    """``datasets[0].root`` → ``["datasets", 0, "root"]``; a clear error for anything else."""
    if not _KEY_PATH.fullmatch(path):
        raise ConfigError(
            f"override {text!r}: bad key path {path!r} (expected a top-level key, then names joined by '.' "
            "and [index] for list items, e.g. train.steps or datasets[0].root)"
        )
    return [name if name else int(index) for name, index in _PART.findall(path)]


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"train.steps=200"`` → (``["train", "steps"]``, ``200``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.steps=200")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {text!r}: the value has a {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {exc}") from None
    return parse_key_path(key.strip(), text), value


def _describe(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + p for i, p in enumerate(parts))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of the config mapping ``data`` with every override applied, in order.

    Missing mapping keys along the path are created (``eval.protocol=adapmtl`` in a config without an
    ``eval`` section); a list index must exist, and a path cannot pass through a value that is not a
    mapping or list.
    """
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, parts[: depth + 1], text, create=not isinstance(parts[depth + 1], int))
        last = parts[-1]
        if isinstance(last, int):
            _check_index(node, last, parts, text)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {_describe(parts[:-1])} holds {node!r}, not a mapping")
        node[last] = value
    return out


def _check_index(node: Any, index: int, parts: list[str | int], text: str) -> None:
    where = _describe(parts[:-1])
    if not isinstance(node, list):
        raise ConfigError(f"override {text!r}: {where} holds {node!r}, not a list")
    if index >= len(node):
        raise ConfigError(f"override {text!r}: {where} has {len(node)} item(s), so [{index}] does not exist")


def _step(node: Any, part: str | int, parts: list[str | int], text: str, create: bool) -> Any:
    if isinstance(part, int):
        _check_index(node, part, parts, text)
        return node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"override {text!r}: {_describe(parts[:-1])} holds {node!r}, not a mapping")
    if part not in node or node[part] is None:
        if not create:
            raise ConfigError(f"override {text!r}: {_describe(parts)} is not a list in the config")
        node[part] = {}
    return node[part]
