"""Peak memory of the test process and of its Ray worker processes (/proc, Linux): the bounded-memory
tests of the embedding actors (test_embed) and of the training workers (test_train_memory)."""
from __future__ import annotations

import os
import threading
import time

from ray_al.bench.embed import descendants


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def _reset_peak(pid: int) -> None:
    try:  # writing 5 resets the kernel's peak-RSS mark (VmHWM) to the current RSS
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not permitted: the mark then covers the process's whole life, which only makes peaks larger


class PeakWatch:
    """Peak memory (MiB) of this process and of each Ray worker process during a block; `actor_title`
    names the workers counted as "actor" (embedding actors, Ray Train workers).

    Per process: `hwm`, the kernel's peak resident set (VmHWM, reset at the start: everything, shared
    libraries included); `anon`, the largest sampled anonymous resident set (RssAnon: heap, arrays,
    tensors: what would grow if a process gathered the pool); `shm`, the largest sampled resident shared
    memory (RssShmem: the object-store pages the process touched). A thread samples every 50 ms and looks
    for new workers every 0.25 s. "actor" processes are the workers whose title contains `actor_title`; the
    others run Ray Data's read/write tasks, controllers (or idle)."""

    FIELDS = {"anon": "RssAnon", "shm": "RssShmem", "hwm": "VmHWM"}

    def __init__(self, actor_title: str = "Embedder"):
        self.actor_title = actor_title

    def __enter__(self) -> "PeakWatch":
        self.me = os.getpid()
        self.seen: dict[int, dict[str, float]] = {}
        self.actors: set[int] = set()
        for pid in [self.me, *descendants(self.me)]:
            _reset_peak(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        pids, listed = [], 0.0
        while not self._stop.is_set():
            if time.monotonic() - listed > 0.25:
                pids, listed = descendants(self.me), time.monotonic()
            self._sample([self.me, *pids])
            time.sleep(0.05)

    def _sample(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                title = _title(pid)
                if pid != self.me and not title.startswith("ray::"):
                    continue  # GCS, raylet, log monitor: Ray's own services
                if pid not in self.seen and pid != self.me:
                    _reset_peak(pid)  # started during the block: count from now (it may be a reused worker)
                now = {k: _status_kb(pid, key) / 1024 for k, key in self.FIELDS.items()}
            except OSError:  # exited between listing and reading
                continue
            peak = self.seen.setdefault(pid, dict.fromkeys(self.FIELDS, 0.0))
            for k, v in now.items():
                peak[k] = max(peak[k], v)
            if self.actor_title in title:
                self.actors.add(pid)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample([self.me, *descendants(self.me)])

    def peaks(self) -> dict[str, dict[str, float]]:
        """{"driver"|"actor"|"task": {"anon"|"shm"|"hwm": largest over the processes of that kind}}."""
        kinds = {"driver": [self.me], "actor": sorted(self.actors),
                 "task": [p for p in self.seen if p not in self.actors and p != self.me]}
        return {kind: {k: max((self.seen[p][k] for p in pids), default=0.0) for k in self.FIELDS}
                for kind, pids in kinds.items()}
