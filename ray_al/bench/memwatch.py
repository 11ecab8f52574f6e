"""Peak memory of this process and of every process below it (a local Ray's services and workers), read
from /proc (Linux): one sampler for the benchmarks (`bench.scale`, per stage) and the bounded-memory tests
(tests/test_embed.py, tests/test_train_memory.py, one block).

A thread samples every `interval_s` and lists new processes every `list_every_s`. Each process gets a kind
from its title (`kind_of(title, stage)`; this process is "driver"); per (stage, kind) the watch keeps the
largest value seen in one process of that kind:

- `hwm`: the kernel's peak resident set (VmHWM), reset when a process is first seen in a (stage, kind):
  everything, shared libraries included, between samples too;
- `rss`: max(VmHWM, VmRSS) (object-store pages a process touched count in it);
- `anon`: the sampled anonymous resident set (RssAnon: heap, arrays, tensors; what grows if a process
  gathers the pool);
- `shm`: the sampled resident shared memory (RssShmem: the object-store pages the process touched).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Iterable, Iterator

FIELDS = {"VmHWM": "hwm", "VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shm"}  # /proc status key -> ours
KindOf = Callable[[str, str], "str | None"]  # (process title, stage) -> kind, or None: not watched


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a local Ray's GCS, raylet and the workers the raylet starts)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def title(pid: int) -> str:
    """The process's title (Ray workers retitle themselves `ray::<actor or task>` as they switch)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def status_mib(pid: int) -> dict[str, float]:
    """{hwm, rss, anon, shm} of a process in MiB (one read of /proc/<pid>/status)."""
    out = dict.fromkeys(FIELDS.values(), 0.0)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in FIELDS:
                out[FIELDS[key]] = int(line.split()[1]) / 1024
    return out


def reset_peak(pid: int) -> None:
    try:  # writing 5 resets the kernel's peak-RSS mark (VmHWM) to the current RSS
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not permitted: the mark then covers the process's life so far (peaks can only look larger)


def ray_worker_kinds(actor_title: str) -> KindOf:
    """Kinds for a block of Ray work: "actor" (a worker whose title holds `actor_title`: embedding actors,
    Ray Train workers), "task" (the other Ray workers: Ray Data tasks, controllers, idle); Ray's own
    services (GCS, raylet, log monitor) are not watched."""

    def kind_of(name: str, stage: str) -> str | None:
        if not name.startswith("ray::"):
            return None
        return "actor" if actor_title in name else "task"

    return kind_of


def object_store_sampler() -> Callable[[], tuple[int, int]]:
    """A function returning (bytes used, bytes spilled in total) of the local Ray's object store (the
    raylet's FormatGlobalMemoryInfo, what `ray memory --stats-only` prints)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)

    def sample() -> tuple[int, int]:
        stats = get_memory_info_reply(state, timeout_seconds=5.0).store_stats
        return int(stats.object_store_bytes_used), int(stats.spilled_bytes_total)

    return sample


class MemWatch:
    """Peak memory per (stage, process kind) while entered (module docstring); `stage(name)` starts a
    stage, the block outside any stage is stage "". `watch_object_store()` (once Ray runs) also samples
    the object store every second: `store[stage]` peak bytes used, `spilled` bytes spilled in total."""

    def __init__(self, kind_of: KindOf, interval_s: float = 0.05, list_every_s: float = 0.25) -> None:
        self.kind_of, self.interval_s, self.list_every_s = kind_of, interval_s, list_every_s
        self.me = os.getpid()
        self.current = ""
        self.peaks_by_stage: dict[str, dict[str, dict]] = {}  # stage -> kind -> {hwm, rss, anon, shm, pids}
        self.store: dict[str, int] = {}
        self.spilled = 0
        self.titles: dict[str, list[str]] = {}  # kind -> a few titles seen (to check the classification)
        self._kind: dict[int, tuple[str, str]] = {}  # pid -> (stage, kind) it was last seen as
        self._store_fn: Callable[[], tuple[int, int]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "MemWatch":
        with self._lock:
            self._sample_all()  # resets every process's peak mark now, before the block allocates
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._sample_all()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Samples taken inside the block count for stage `name`; peaks restart at its start."""
        with self._lock:
            self.current = name
        try:
            yield
        finally:
            with self._lock:
                self._sample_all()
                self.current = ""

    def watch_object_store(self) -> None:
        self._store_fn = object_store_sampler()

    def _poll(self) -> None:
        pids, listed, stored = [], 0.0, 0.0
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if time.monotonic() - listed > self.list_every_s:
                    pids, listed = descendants(self.me), time.monotonic()
                self._sample(pids)
                if self._store_fn is not None and time.monotonic() - stored > 1.0:
                    self._sample_store()
                    stored = time.monotonic()

    def _sample_all(self) -> None:
        self._sample(descendants(self.me))
        if self._store_fn is not None:
            self._sample_store()

    def _sample(self, pids: list[int]) -> None:
        for pid in [self.me, *pids]:
            try:
                name = "" if pid == self.me else title(pid)
                kind = "driver" if pid == self.me else self.kind_of(name, self.current)
                if kind is None:
                    continue
                if self._kind.get(pid) != (self.current, kind):  # new here: count from now
                    reset_peak(pid)
                    self._kind[pid] = (self.current, kind)
                    self._note(kind, name)
                now = status_mib(pid)
            except (OSError, IndexError, ValueError):  # exited between listing and reading
                continue
            if not now["rss"]:
                continue  # a zombie: exited, not yet reaped
            now["rss"] = max(now["rss"], now["hwm"])
            peak = self.peaks_by_stage.setdefault(self.current, {}).setdefault(
                kind, {**dict.fromkeys(FIELDS.values(), 0.0), "pids": set()})
            for k, v in now.items():
                peak[k] = max(peak[k], v)
            peak["pids"].add(pid)

    def _note(self, kind: str, name: str) -> None:
        seen = self.titles.setdefault(kind, [])
        if name and len(seen) < 6 and name[:80] not in seen:
            seen.append(name[:80])

    def _sample_store(self) -> None:
        try:
            used, spilled = self._store_fn()
        except Exception:  # Ray shutting down, or a slow raylet: skip this sample
            return
        self.store[self.current] = max(self.store.get(self.current, 0), used)
        self.spilled = max(self.spilled, spilled)

    def peaks(self, stage: str = "", kinds: Iterable[str] = ()) -> dict[str, dict[str, float]]:
        """{kind: {hwm, rss, anon, shm: MiB, largest in one process of that kind}} of a stage; the `kinds`
        named are there (zeros) even when no such process was seen."""
        seen = self.peaks_by_stage.get(stage, {})
        out = {k: dict.fromkeys(FIELDS.values(), 0.0) for k in kinds}
        out.update({k: {f: v[f] for f in FIELDS.values()} for k, v in seen.items()})
        return out

    def pids(self, kind: str, stage: str = "") -> set[int]:
        """The processes seen as `kind` in a stage."""
        return set(self.peaks_by_stage.get(stage, {}).get(kind, {}).get("pids", ()))
