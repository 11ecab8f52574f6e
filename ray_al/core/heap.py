"""Hand freed heap pages back to the operating system between rounds. Pure (no Ray).

A long run's driver frees most of what a round allocated (Arrow tables, embeddings, the selection's
matrices), but glibc's allocator keeps freed pages in its arenas, so the resident memory of a 100-round run
crept up by about 1 MiB a round with no Python object left behind (docs/RELIABILITY.md, "Long runs").
`malloc_trim(0)` returns those pages; elsewhere (no glibc) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None


def release_freed_heap() -> bool:
    """Ask glibc to return the free pages of every arena; False where there is no glibc malloc_trim."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True
