"""What the fault drills share: cycles and label imports launched with a kill point armed (ray_al.core.faults),
the uninterrupted reference run they are compared with, and a read-only run directory.

Every launch is its own session (`start_new_session`) and its own Ray job on a head shared by the launches
(tests/rayhead.py): once the driver is dead, Ray ends the job's workers and actors and the test kills what
is left of the driver's group, so the next attempt meets no leftover of the dead one but its files.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from ray_al.core.faults import KILL_AT, KILL_MARKER, KILL_NTH
from tests.rayhead import shared_env
from tests.test_cycle import REPO, ledger_rows

# The smoke test's sizes spelled out (--smoke-test forces one epoch): two epochs with a checkpoint after
# each, so a kill inside training has an epoch checkpoint to resume from. One round of selection.
ARGS = ["data.pool_size=400", "data.test_size=200", "train.epochs=2", "train.checkpoint_every_s=0",
        "train.batch_size=32", "train.unlabeled_batch_size=32", "embed.batch_size=128",
        "al.rounds=1", "al.initial_size=20", "al.budget=15"]
__all__ = ["ARGS", "Launch", "kill_at", "launch", "ledger_rows", "lose_node_during", "queried", "read_only", "results",
           "round_dir"]


@dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str

    def tail(self) -> str:
        return self.stdout[-3000:] + self.stderr[-3000:]


def launch(module: str, *args: str, tmp: Path, env: dict | None = None, preexec_fn=None,
           timeout: float = 600) -> Launch:
    """`python -m module args` in its own session, joined to the process's shared Ray head
    (tests/rayhead.py); its leftovers are killed once it exits. Output goes to files: processes it starts
    inherit the driver's descriptors and may outlive a killed driver."""
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=o, stderr=e,
                                env={**os.environ, **shared_env(), **(env or {})}, preexec_fn=preexec_fn,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return Launch(proc.returncode, out.read_text(), err.read_text())


def kill_at(point: str, module: str, *args: str, tmp: Path, nth: int = 1) -> Path:
    """Launch with `point` armed (to kill at its `nth` reach) and check the process died there by SIGKILL;
    returns the marker."""
    marker = tmp / f"killed-at-{point}"
    run = launch(module, *args, tmp=tmp, env={KILL_AT: point, KILL_MARKER: str(marker), KILL_NTH: str(nth)})
    assert run.returncode == -signal.SIGKILL, f"not killed at {point} (exit {run.returncode}):\n{run.tail()}"
    assert marker.is_file(), f"killed, but not by the {point} kill point"
    return marker


def results(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    return [(r["round"], r["labels"], r["accuracy"]) for r in rows]


def round_dir(run_dir: Path, r: int = 0) -> Path:
    return run_dir / "rounds" / f"{r:04d}"


def queried(run_dir: Path, r: int = 0) -> list:
    return pq.read_table(round_dir(run_dir, r) / "queries.parquet").column("id").to_pylist()


def read_only(directory: Path):
    """Make `directory` read-only; returns a preexec_fn under which it is read-only for root too (root
    ignores permission bits while it holds CAP_DAC_OVERRIDE: the launched process drops it)."""
    directory.chmod(0o555)
    if os.geteuid() != 0:
        return None

    def drop_dac_override() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set before exec
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop_dac_override


def lose_node_during(cluster, marker: Path, work: Callable[[], Any], replacement: dict,
                     timeout: float = 300) -> tuple[Any, str]:
    """Run `work` in a thread; once a Ray process holds (ray_al.core.faults.hold writes `marker` with its node),
    remove that node from the `ray.cluster_utils.Cluster` and add one with `replacement` node args, as an
    autoscaler would. Returns (what `work` returned, the lost node's id)."""
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(work)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert not done.done(), f"the work ended without holding at the fault point: {done.result()!r}"
            assert time.monotonic() < deadline, f"nothing held within {timeout:.0f} s ({marker})"
            time.sleep(0.2)
        lost = json.loads(marker.read_text())["node"]
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == lost))
        cluster.add_node(**replacement)
        return done.result(timeout=timeout), lost
