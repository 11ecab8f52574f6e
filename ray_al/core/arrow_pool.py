"""Arrow's memory pool of a driver that runs many rounds: the system allocator, not Arrow's default mimalloc.

Import this module before anything loads pyarrow (the command lines do, first): Arrow picks its C++ default
pool once, from ARROW_DEFAULT_MEMORY_POOL, when the library loads; `pyarrow.set_memory_pool` later changes
only pyarrow's own Python-side default, not what the Parquet readers and dataset scanners allocate from.
The variable is put back afterwards, so Ray workers started by this driver keep Arrow's default.

Why: mimalloc kept the pages Arrow's threads had freed. At each commit of 60 rounds of the embedded default
(bench.soak's stream, 2026-12-06): the driver's resident set 756 -> 840 MiB while glibc's in-use heap stayed
at 152.5 -> 153.2 MiB and Python's objects and Arrow's allocated bytes were flat (a 1 GiB anonymous mapping
grew 30 -> 110 MiB resident); with ARROW_DEFAULT_MEMORY_POOL=system, 732 -> 739 MiB.
"""
from __future__ import annotations

import os
import sys

VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"

if "pyarrow" not in sys.modules:
    _previous = os.environ.get(VARIABLE)
    os.environ[VARIABLE] = "system"
    try:
        import pyarrow  # noqa: F401  loads now, with the system pool as its default
    finally:
        if _previous is None:
            del os.environ[VARIABLE]
        else:
            os.environ[VARIABLE] = _previous
