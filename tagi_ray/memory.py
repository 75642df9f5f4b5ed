"""Give freed heap memory back to the OS between units of work (teacher packs).

glibc keeps freed chunks in its arenas; packs of different sequence lengths allocate tensors of
different sizes, the holes they leave are not all reused, and a long-lived worker's resident set
creeps upwards pack after pack. `malloc_trim(0)` returns the free pages of every arena.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name else None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Collect Python garbage and trim glibc's heap; False where there is no `malloc_trim`
    (musl, macOS): then only the garbage collection happened."""
    gc.collect()
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
