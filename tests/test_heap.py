"""ray_al.core.heap: freed heap goes back to the operating system (the soak's driver memory)."""
from __future__ import annotations

from ray_al.core.heap import release_freed_heap


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_freed_small_blocks_leave_the_resident_set_only_when_trimmed() -> None:
    """~200 MiB of 2 kB blocks freed under a live one: glibc keeps the pages until malloc_trim."""
    blocks = [bytearray(2000) for _ in range(100_000)]
    pin = bytearray(2000)  # allocated last, it keeps the heap's top from shrinking on its own
    before = _rss_mib()
    del blocks
    kept = _rss_mib()
    assert kept > before - 50, "the allocator returned the pages by itself: this test shows nothing here"
    assert release_freed_heap() is True
    assert _rss_mib() < kept - 100
    del pin
