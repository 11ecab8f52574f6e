"""The memory sampler of the benchmarks and the bounded-memory tests (ray_al.bench.memwatch), without Ray:
a child process that allocates a known heap is seen, in the stage it ran in and as the kind it was given."""
from __future__ import annotations

import subprocess
import sys

from ray_al.bench.memwatch import MemWatch, descendants, ray_worker_kinds

CHILD = ("import time; b = bytearray(160 * 2**20); n = len(b[::4096]); b[::4096] = b'x' * n; "
         "time.sleep(0.6)  # memwatch-child")


def kind_of(title: str, stage: str) -> str | None:
    return "child" if "memwatch-child" in title else None


def test_a_child_heap_is_counted_in_its_stage() -> None:
    with MemWatch(kind_of, interval_s=0.02, list_every_s=0.05) as watch:
        with watch.stage("small"):
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.4)  # memwatch-child"], check=True)
        with watch.stage("big"):
            child = subprocess.Popen([sys.executable, "-c", CHILD])
            assert child.pid in descendants(watch.me)
            assert child.wait() == 0
    big, small = watch.peaks("big"), watch.peaks("small", kinds=("child", "other"))
    assert big["child"]["anon"] >= 150 and big["child"]["hwm"] >= 150, big
    assert small["child"]["anon"] < 100 and small["other"] == {"hwm": 0.0, "rss": 0.0, "anon": 0.0, "shm": 0.0}
    assert big["driver"]["rss"] > 0 and watch.pids("child", "big") == {child.pid}
    assert watch.titles["child"]  # a few titles per kind, to check a classification by eye


def test_ray_worker_kinds_by_title() -> None:
    kinds = ray_worker_kinds("Embedder")
    assert kinds("ray::MapWorker(MapBatches(Embedder))", "") == "actor"
    assert kinds("ray::ReadParquet", "") == "task"
    assert kinds("/usr/bin/raylet --node", "") is None
