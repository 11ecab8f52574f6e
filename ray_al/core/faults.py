"""Named kill points for fault drills: SIGKILL this process where a test says, not where timing puts it.

    RAY_AL_KILL_AT=embed.written RAY_AL_KILL_MARKER=/tmp/killed python -m ray_al.cycle ...

`kill_point(name)` does nothing unless `RAY_AL_KILL_AT` names `name`. Then it writes the marker file
`RAY_AL_KILL_MARKER` and SIGKILLs the process; once the marker exists the point is passed, so a resumed
run with the same environment goes on. Without a marker the point kills every time it is reached.
`RAY_AL_KILL_NTH=n` kills at the n-th time this process reaches the point (default 1).
The points (docs/RELIABILITY.md lists them with their tests):

* cycle driver, `ray_al.loop.rounds`: `train.done`, `embed.written`, `embed.done`, `select.written`,
  `select.done`, `label.committed`, `label.done`, `round.committed`;
* `python -m ray_al.label import`, `ray_al.run.oracle`: `import.committed`;
* `python -m ray_al.sweep`, the sweep driver: `sweep.result`, reached each time a trial reports a committed
  round to Tune (the trial runs on; killing the driver there kills the sweep mid-trial);
* `train.epoch`: a training worker SIGKILLs the cycle driver at the first step of epoch 1 (after epoch 0's
  checkpoint; needs train.epochs >= 2), through a `FaultInjection` (`driver_kill`).

Hold points stand in for a lost node: `RAY_AL_HOLD_AT=<point> RAY_AL_HOLD_MARKER=<file>` makes the first
process to reach the point (in any Ray worker of the job) write the marker, a JSON object with its `node`
id and `pid`, and wait there until it is killed. A drill then removes that node
(`ray.cluster_utils.Cluster.remove_node`); the retried work finds the marker and goes on. Points
(`HOLD_POINTS`): `embed.batch` (an embedding actor, at a batch). A training worker holds the same way
through a `FaultInjection` with `hold=True`, at the rank, epoch and step it names. (k-center
shards need no hold point: the selection's `on_pass` callback runs in the driver between passes.)
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

KILL_AT = "RAY_AL_KILL_AT"
KILL_MARKER = "RAY_AL_KILL_MARKER"
KILL_NTH = "RAY_AL_KILL_NTH"
POINTS = ("train.epoch", "train.done", "embed.written", "embed.done", "select.written", "select.done",
          "label.committed", "label.done", "round.committed", "import.committed", "sweep.result")
HOLD_AT = "RAY_AL_HOLD_AT"
HOLD_MARKER = "RAY_AL_HOLD_MARKER"
HOLD_POINTS = ("embed.batch",)
_reached: dict[str, int] = {}


def armed(name: str) -> str | None:
    """The marker path ("" for none) when `name` is the point to kill at and it was not passed yet."""
    if os.environ.get(KILL_AT) != name:
        return None
    marker = os.environ.get(KILL_MARKER, "")
    return None if marker and os.path.exists(marker) else marker


def write_marker(marker: str, what: str) -> None:
    """Remember the kill before dying, so the resumed run passes the point."""
    if marker:
        with open(marker, "w") as f:
            f.write(f"{what} pid {os.getpid()}\n")


def kill_point(name: str) -> None:
    """SIGKILL this process here when `RAY_AL_KILL_AT` names `name` (module docstring)."""
    marker = armed(name)
    if marker is None:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] < int(os.environ.get(KILL_NTH) or 1):
        return
    write_marker(marker, f"killed at {name}")
    os.kill(os.getpid(), signal.SIGKILL)


def hold_point(name: str, node_id: Callable[[], str]) -> None:
    """Wait here until killed when `RAY_AL_HOLD_AT` names `name` and no process held there yet (module
    docstring): the drill takes this process's node (`node_id()`, asked only when armed) away."""
    marker = os.environ.get(HOLD_MARKER, "")
    if os.environ.get(HOLD_AT) == name and marker:
        hold(marker, name, node_id())


def hold(marker: str, what: str, node: str) -> None:
    """Write the note to `marker` and wait until killed, unless the marker exists (then return)."""
    note = {"point": what, "node": node, "pid": os.getpid()}
    draft = f"{marker}.{os.getpid()}"
    with open(draft, "w") as f:
        json.dump(note, f)
    try:
        os.link(draft, marker)  # atomic and exclusive: one holder, and readers never see half a note
    except FileExistsError:
        return  # held once already: this is the retried work
    finally:
        os.unlink(draft)
    while True:
        time.sleep(1.0)


# ----------------------------------------------------------------------------- a training worker's drill


@dataclass(frozen=True)
class FaultInjection:
    """Test/chaos drill of a training worker (ray_al.workers.train calls `step_hook` every epoch): SIGKILL
    rank `rank` at (epoch, step), once (the `marker` file remembers); with `pid`, rank `rank` SIGKILLs that
    process instead (the cycle driver: `train.epoch`, `driver_kill`); with `hold`, it notes its node in
    `marker` and waits for the drill to remove that node (a lost node).

    The worker first waits, at most `wait_s`, until Ray Train's controller has registered the previous
    epoch's checkpoint (ray_al.workers.train.checkpoint_registered): a crash before that resumes one epoch
    further back, and a drill must not depend on how fast a loaded machine gets there.
    """

    epoch: int
    marker: str
    step: int = 0
    rank: int = 0
    wait_s: float = 120.0
    pid: int = 0  # 0: the worker itself
    hold: bool = False  # instead of a kill, note this node in `marker` and wait: the drill removes the node


def step_hook(fault: FaultInjection | None, epoch: int, rank: int, node_id: Callable[[], str],
              registered: Callable[[int, float], str]):
    """The per-step callback of the epoch and rank `fault` names (None elsewhere); `node_id()` is asked
    only by a hold, for the note the drill reads; `registered(epoch, wait_s)` waits until the controller
    holds that epoch's checkpoint ("" once it does, else what it holds instead: the marker says so)."""
    if fault is None or fault.epoch != epoch or fault.rank != rank:
        return None

    def on_step(step: int) -> None:
        if step != fault.step or os.path.exists(fault.marker):
            return
        late = registered(epoch - 1, fault.wait_s)
        if fault.hold:
            hold(fault.marker, f"rank {rank} at epoch {epoch} step {step}{late}", node_id())
            return
        with open(fault.marker, "w") as f:
            f.write(f"killed pid {fault.pid or os.getpid()} from rank {rank} at epoch {epoch} step {step}{late}\n")
        os.kill(fault.pid or os.getpid(), signal.SIGKILL)
        if fault.pid:  # the driver is gone: train no further (no later checkpoint) until Ray ends this worker
            time.sleep(3600)

    return on_step


def driver_kill() -> FaultInjection | None:
    """`train.epoch` when armed: rank 0 SIGKILLs this process (the driver) once epoch 0 is checkpointed."""
    from ray_al.core.config import ConfigError

    marker = armed("train.epoch")
    if marker is None:
        return None
    if not marker:
        raise ConfigError(f"{KILL_AT}=train.epoch needs {KILL_MARKER} (a worker cannot tell "
                          "a resumed driver from the killed one without it).")
    return FaultInjection(epoch=1, marker=marker, pid=os.getpid())
