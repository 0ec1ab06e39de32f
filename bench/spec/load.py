"""Read a matrix YAML strictly and turn validation failures into one precise, readable error.

A config is UTF-8 text read with ``yaml.safe_load``'s semantics, except that a key given twice in one
mapping is an error naming both lines (plain YAML silently keeps the last one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mtlprune.spec.models import MatrixSpec


class ConfigError(ValueError):
    """An unusable config; the message names the file, key path, value and what is allowed."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice; the message gives the key path and both lines."""


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a duplicate key in any mapping (checked on the node tree before
    anything is constructed, so the error can name the key's full path)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", set())
        return self.construct_document(node)


def _check_duplicates(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: checked where its anchor is (and recursive structures end)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<': merged keys may be overridden
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                if key in first_line:
                    lines = (
                        f"lines {first_line[key]} and {line}" if first_line[key] != line else f"line {line}"
                    )
                    raise DuplicateKeyError(
                        f"duplicate key {child} on {lines} (YAML would keep only the last; remove one)"
                    )
                first_line[key] = line
            else:
                child = f"{path}.<key>" if path else "<key>"
            _check_duplicates(value_node, child, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", seen)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text``, refusing duplicate keys (DuplicateKeyError, a yaml.YAMLError)."""
    loader = StrictSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_utf8(
    path: Path, error: type[ValueError] = ConfigError, expected: str = "save the config as UTF-8"
) -> str:
    """The text of a file; bytes that are not UTF-8 raise ``error`` naming the file, the byte, its offset
    and ``expected`` (what the file should be). Every config, listing and store record is read so."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}: {exc.reason}); "
            f"{expected}"
        ) from None


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
        data = load_yaml(read_utf8(path))
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not overrides:
        return parse_matrix(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_matrix(apply_overrides(data, overrides), f"{path} with overrides {' '.join(overrides)}")
