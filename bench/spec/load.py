"""Read a matrix YAML with safe_load and turn validation failures into one precise, readable error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mtlprune.spec.models import MatrixSpec


class ConfigError(ValueError):
    """An unusable config; the message names the file, key path, value and what is allowed."""


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''})"]
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        value = "" if isinstance(shown, dict) or err["type"] == "missing" else f" (got {shown!r})"
        lines.append(f"  {_key_path(err['loc'])}: {msg}{value}")
    return "\n".join(lines)


def parse_matrix(data: Any, source: str = "<config>") -> MatrixSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return MatrixSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_matrix(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> MatrixSpec:
    """The matrix of a YAML file, with ``key.path=value`` overrides (spec.overrides) applied first."""
    from mtlprune.spec.overrides import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not overrides:
        return parse_matrix(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_matrix(apply_overrides(data, overrides), f"{path} with overrides {' '.join(overrides)}")
