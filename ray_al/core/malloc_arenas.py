"""glibc's malloc arenas of a driver that runs many rounds: at most ARENAS, set before its threads start.

Import this module first in a command line, beside core.arrow_pool: glibc gives each new thread that
allocates its own arena, up to 8 per core, and hands little of a fragmented arena back to the system; a
driver's threads (Ray's core worker, Arrow's readers, faiss' OpenMP pool, torch) each grow one. Only this
process is limited (mallopt, not MALLOC_ARENA_MAX in the environment): the Ray workers it starts keep
glibc's default. Elsewhere (macOS, musl) it does nothing.

Why: the embedded default's driver at each commit over 60 rounds (`python -m ray_al.bench.soak --rounds 60
--per-round-rounds 0`, 2026-12-07, docs/RELIABILITY.md "Long runs"): +0.106 MiB a round with glibc's
default arenas, +0.043 with MALLOC_ARENA_MAX=2.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap this process's malloc arenas (glibc on Linux); True when glibc took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)  # musl has none
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, int(arenas)) == 1)


LIMITED = limit_arenas()
