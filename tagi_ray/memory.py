"""Give freed heap memory back to the OS between units of work (teacher packs).

glibc keeps freed chunks in its arenas; packs of different sequence lengths allocate tensors of
different sizes, the holes they leave are not all reused, and a long-lived worker's resident set
creeps upwards pack after pack. `malloc_trim(0)` returns the free pages of every arena (Arrow's
own allocator is not affected).
"""
from __future__ import annotations

import ctypes
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, from the symbols already loaded into this process; None without."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Collect Python garbage and trim glibc's heap; False where there is no `malloc_trim`
    (musl, macOS): then only the garbage collection happened."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
