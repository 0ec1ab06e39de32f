"""MTL-PruneBench: compare pruning methods for multi-task dense-prediction networks.

The public names a method plugin needs come from here (``from mtlprune import PruningMethod, METHODS,
MethodContext``). They load on first use, so ``import mtlprune`` stays torch-free: the report and the
analysis layer run where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ARCHS",
    "DATASETS",
    "METHODS",
    "MethodContext",
    "MethodParams",
    "NoParams",
    "OneShotMethod",
    "PruningMethod",
]

_EXPORTS = {
    "ARCHS": "mtlprune.registry",
    "DATASETS": "mtlprune.registry",
    "METHODS": "mtlprune.registry",
    "MethodContext": "mtlprune.engine.context",
    "MethodParams": "mtlprune.methods.base",
    "NoParams": "mtlprune.methods.base",
    "OneShotMethod": "mtlprune.methods.base",
    "PruningMethod": "mtlprune.methods.base",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtlprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
