"""Content-hash identity of specs (OpenLTH-style, hardened).

Rules, so that stored results are neither silently invalidated nor aliased:
- a field marked ``json_schema_extra={"hash": False}`` (paths, devices, worker counts, eval batch size)
  never enters the hash;
- a field whose value equals its declared default is omitted, so adding a field whose default reproduces
  the old behaviour keeps every existing hash. The defaults themselves are frozen by
  ``tests/spec/test_spec_identity.py`` (a snapshot of every default): changing one fails that test, and the
  change must either keep the old behaviour or bump ``SCHEMA_VERSION`` (which is always hashed);
- keys are sorted, separators compact, floats in shortest round-trip form (Python's ``repr``);
- the hash is sha256 of that JSON, first 16 hex digits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def is_semantic(model_cls: type[BaseModel], field: str) -> bool:
    extra = model_cls.model_fields[field].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("hash") is False)


def _dump_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return semantic_dump(value)
    if isinstance(value, list | tuple):
        return [_dump_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _dump_value(v) for k, v in value.items()}
    return value


def semantic_dump(model: BaseModel) -> dict[str, Any]:
    """The hashed view of `model`: non-default, semantic fields only, recursively."""
    out: dict[str, Any] = {}
    cls = type(model)
    for name, info in cls.model_fields.items():
        if not is_semantic(cls, name):
            continue
        value = getattr(model, name)
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("always_hash"):
            out[name] = _dump_value(value)
            continue
        if not info.is_required() and value == info.get_default(call_default_factory=True):
            continue
        dumped = _dump_value(value)
        if isinstance(value, BaseModel) and dumped == {}:
            continue  # differs from the default only in non-semantic fields
        out[name] = dumped
    return out


def canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def spec_hash(model: BaseModel) -> str:
    """16-hex-digit content hash of a spec's semantic fields."""
    return hashlib.sha256(canonical_json(semantic_dump(model)).encode()).hexdigest()[:16]
