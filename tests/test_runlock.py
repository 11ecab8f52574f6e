"""The run directory's lock: one writer at a time, named when it refuses another, and never left behind
for ever by a holder that died (same host: a dead pid frees it; elsewhere: a stale heartbeat)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ray_al.core import storage
from ray_al.run.runlock import RunLock, RunLockedError
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3").uri(f"lock-{uuid.uuid4().hex[:8]}")


def _plant(run_uri: str, **holder) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": "cycle", "token": "t",
              "started": time.time(), "heartbeat": time.time(), **holder}
    storage.write_bytes_atomic(storage.join(run_uri, "LOCK"), json.dumps(record).encode())


def test_a_second_holder_is_refused_naming_the_first(run_uri):
    with RunLock(run_uri, purpose="cycle"):
        with pytest.raises(RunLockedError) as ei:
            RunLock(run_uri, purpose="label import").acquire()
    msg = str(ei.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "cycle" in msg
    assert "delete" in msg and storage.join(run_uri, "LOCK") in msg
    with RunLock(run_uri):  # released on exit: the next one gets it
        pass
    assert not storage.exists(storage.join(run_uri, "LOCK"))


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(run_uri):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    _plant(run_uri, pid=int(dead.stdout))  # fresh heartbeat, but its process is gone
    with RunLock(run_uri) as lock:
        assert storage.read_json(storage.join(run_uri, "LOCK"))["token"] == lock.token


def test_another_hosts_lock_expires_with_its_heartbeat(run_uri):
    _plant(run_uri, host="node-that-was-lost", heartbeat=time.time() - 5)
    with pytest.raises(RunLockedError, match="node-that-was-lost"):
        RunLock(run_uri, stale_s=60).acquire()
    _plant(run_uri, host="node-that-was-lost", heartbeat=time.time() - 120)
    with RunLock(run_uri, stale_s=60) as lock:
        assert storage.read_json(storage.join(run_uri, "LOCK"))["token"] == lock.token


def _within(seconds: float, condition, what: str) -> None:
    """Wait for `condition()` (a loaded machine may take long to run the heartbeat thread), at most
    `seconds`; fail naming `what` it never saw."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(0.05)


def test_the_heartbeat_is_renewed_and_survives_a_deleted_directory(tmp_path):
    run = str(tmp_path / "run")
    lock_uri = storage.join(run, "LOCK")
    with RunLock(run, heartbeat_s=0.1):
        first = storage.read_json(lock_uri)["heartbeat"]
        _within(30, lambda: storage.read_json(lock_uri)["heartbeat"] > first, "a renewed heartbeat")
        storage.remove_tree(run)  # run.overwrite starts the directory afresh
        _within(30, lambda: storage.exists(lock_uri), "the lock written again in the deleted directory")
    assert not storage.exists(lock_uri)


def test_a_second_cycle_and_a_label_import_are_refused_while_a_cycle_holds_the_run(tmp_path):
    """The command lines take the lock before any work (before Ray starts): exit 2, naming the holder."""
    run = str(tmp_path / "run")
    _plant(run, purpose="cycle")  # a live holder: this test's own process
    repo = str(Path(__file__).resolve().parents[1])
    for cmd in (["ray_al.cycle", "--smoke-test", f"run.dir={run}"], ["ray_al.label", "import", run, "x.csv"]):
        if cmd[0] == "ray_al.label":
            storage.write_text_atomic(storage.join(run, "run.json"), json.dumps({"num_classes": 2, "id_type": "int64"}))
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=repo, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"in use: cycle pid {os.getpid()} on host {socket.gethostname()}" in proc.stderr, proc.stderr[-2000:]
    assert storage.read_json(storage.join(run, "LOCK"))["token"] == "t"  # the holder's lock is untouched
