"""One `ray start --head` per pytest process for the cycles the tests launch as subprocesses.

A cycle launched with RAY_ADDRESS=local starts a Ray of its own and stops it at exit: 7-9 s idle, 15-25 s
on a loaded 2-core box, paid again by every resume of a fault drill. Launched with `shared_env()`, it joins
this head instead (under a second): every driver is its own Ray job, with its own namespace, workers and
objects, all gone with the driver, as on a user's cluster (tests/test_job_submit.py runs two at once). The
head starts on first use and stops when the session ends (conftest's `shared_ray_head`).
"""
from __future__ import annotations

from pathlib import Path

from ray_al.bench.overhead import LocalHead

REPO = Path(__file__).resolve().parents[1]
# What `init_ray` sets for a local Ray it starts and leaves alone on a cluster it joins: no Ray Train
# preemption watcher (an actor start per fit) on a head that has no node to drain.
HEAD_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
_head: list[LocalHead] = []


def shared_env(cpus: int = 2) -> dict:
    """Environment for a launched driver to join this process's head (started now if not yet)."""
    if not _head:
        head = LocalHead(REPO, cpus, env=HEAD_ENV)
        _head.append(head)
        head.wait_ready()
    return {"RAY_ADDRESS": _head[0].gcs_address, **HEAD_ENV}


def stop() -> None:
    """Stop the head; after a few seconds, kill it (nothing on it needs a clean stop)."""
    while _head:
        _head.pop().stop(grace_s=5.0)
