"""One writer per run directory: `RUN_DIR/LOCK` names its holder and carries a heartbeat.

A cycle (or a label import) takes the lock for as long as it writes the run directory. A second one is
refused with a message naming the holder. A holder that died cannot leave the lock behind for ever: on
the same host a dead pid frees it at once; elsewhere (a lost node, another machine) a heartbeat older
than `stale_s` does. Creating the lock is exclusive (`storage.create_exclusive`: an O_EXCL link locally,
a conditional PUT on S3). Taking over a stale lock removes it and creates a fresh one exclusively, so of
two processes that both saw it stale, one wins; the narrow window in which both could remove and one
re-create is closed by the ledger itself, whose commits never lose each other (ledger.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from ray_al.core import storage

LOCK_FILE = "LOCK"
HEARTBEAT_S = 10.0
STALE_S = 60.0
log = logging.getLogger("ray_al.run.runlock")


class RunLockedError(ValueError):
    """Another live process holds the run directory (a user error: the CLIs print it and exit 2)."""


class RunLock:
    """`with RunLock(run_uri): ...` holds the run directory, renewing the heartbeat in a thread."""

    def __init__(self, run_uri: str, *, purpose: str = "cycle", heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S):
        self.uri = storage.join(run_uri, LOCK_FILE)
        self.run_uri, self.purpose = run_uri, purpose
        self.heartbeat_s, self.stale_s = float(heartbeat_s), float(stale_s)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                "token": self.token, "started": self._started, "heartbeat": time.time()}

    def acquire(self) -> None:
        self._started = time.time()
        storage.makedirs(self.run_uri, private=True)  # the lock is a new run's first file
        for _ in range(3):  # the holder may release between our create and our read
            if storage.create_exclusive(self.uri, json.dumps(self._record()).encode()):
                self._start_heartbeat()
                return
            holder = _read(self.uri)
            if holder is None:
                continue
            if not self._stale(holder):
                raise RunLockedError(self._refusal(holder))
            log.warning("taking over the lock of %s: %s", self.run_uri, _describe(holder, self.stale_s))
            if _read(self.uri) == holder:  # still the stale one: nobody took it over meanwhile
                storage.remove_tree(self.uri)
        raise RunLockedError(f"could not take the lock {self.uri}: other processes keep taking it; try again.")

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("heartbeat", 0.0)) > self.stale_s

    def _refusal(self, holder: dict) -> str:
        return (f"the run directory {self.run_uri} is in use: {_describe(holder, self.stale_s)}. Wait for that "
                f"{holder.get('purpose', 'process')} to finish (a cycle waiting for labels has exited and holds "
                f"nothing). If it was killed, its lock expires {self.stale_s:.0f} s after its last heartbeat; "
                f"on its own host a dead process frees it at once. To force it, delete {self.uri}.")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="ray_al-runlock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Refresh the heartbeat (re-create the lock if `run.overwrite` deleted the directory); False if
        another process has taken the lock over."""
        holder = _read(self.uri)
        if holder is not None and holder.get("token") != self.token:
            log.warning("the lock of %s was taken over by another process (%s)", self.run_uri,
                        _describe(holder, self.stale_s))
            return False
        storage.write_bytes_atomic(self.uri, json.dumps(self._record()).encode())
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        holder = _read(self.uri)
        if holder is not None and holder.get("token") == self.token:
            storage.remove_tree(self.uri)


def _read(uri: str) -> dict | None:
    try:
        return storage.read_json(uri)
    except (FileNotFoundError, ValueError):  # released meanwhile, or caught half-written on a non-atomic store
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict, stale_s: float) -> str:
    age = time.time() - float(holder.get("heartbeat", 0.0))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0.0))))
    return (f"{holder.get('purpose', 'a process')} pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {started}, last heartbeat {age:.0f} s ago")
