"""Keep freed memory in the process for reuse (``runtime.keep_freed_memory``, on by default).

glibc's malloc serves every request above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it with ``munmap`` when freed. A training step frees and reallocates the same large tensors every
step (weight gradients, optimizer temporaries, activations), so at full width each step faults in GBs of
fresh zeroed pages one 4 KiB page at a time: a MobileNetV2-MTL step at full width took 4.3 s on the 2-core
VM, 1.8 s with freed memory kept (docs/accounting.md, "A training step at full width"). Setting
``M_MMAP_MAX`` to 0 puts every allocation on the heap, and ``M_TRIM_THRESHOLD`` −1 never gives the heap's top
back, so a step reuses the pages of the step before. Numbers are unaffected (allocation addresses never
enter arithmetic; torch aligns every buffer to 64 bytes either way). The cost: a resident size that stays
at the process's peak until it exits, plus what the heap's fragmentation adds before it settles (torch's
aligned allocations ask for a little more than the block they freed, so the heap grows for a few steps;
MobileNetV2-MTL full width: peak 5.26 GiB instead of 4.80 GiB, steady after three steps). Elsewhere than
glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Configure glibc's malloc for this process as above; True when it is (now or already) in effect."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    # mallopt returns 1 on success; each setting is independent, both are needed for the effect.
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    return _applied
