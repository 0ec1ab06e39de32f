"""The store: the torch-free on-disk contract between the stages that write results and everything that reads
them (docs/design.md, "The store").

``layout`` is where each file lives and how it is written (atomically); ``records`` the typed result, status
and manifest files; ``integrity`` whether a result is intact and ``store check``; ``stages`` the ``Store``
that reads and writes a stage's folder; ``manifest`` the matrix record; ``maskio`` the packed masks;
``provenance`` what produced a result. The names below are the store's everyday API.
"""

from mtlprune.store.layout import (
    DEFAULT_STORE,
    RESULT,
    SPEC,
    STATUS,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_result,
    read_status,
)
from mtlprune.store.stages import Store, StoreError

__all__ = [
    "DEFAULT_STORE",
    "RESULT",
    "SPEC",
    "STATUS",
    "Store",
    "StoreError",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "read_result",
    "read_status",
]
