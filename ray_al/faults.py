"""Named kill points for fault drills: SIGKILL this process where a test says, not where timing puts it.

    RAY_AL_KILL_AT=embed.written RAY_AL_KILL_MARKER=/tmp/killed python -m ray_al.cycle ...

`kill_point(name)` does nothing unless `RAY_AL_KILL_AT` names `name`. Then it writes the marker file
`RAY_AL_KILL_MARKER` and SIGKILLs the process; once the marker exists the point is passed, so a resumed
run with the same environment goes on. Without a marker the point kills every time it is reached.
`RAY_AL_KILL_NTH=n` kills at the n-th time this process reaches the point (default 1).
The points (docs/RELIABILITY.md lists them with their tests):

* cycle driver, `ray_al.loop`: `train.done`, `embed.written`, `embed.done`, `select.written`,
  `select.done`, `label.committed`, `label.done`, `round.committed`;
* `python -m ray_al.label import`, `ray_al.oracle`: `import.committed`;
* `python -m ray_al.sweep`, the sweep driver: `sweep.result`, reached each time a trial reports a committed
  round to Tune (the trial runs on; killing the driver there kills the sweep mid-trial);
* `train.epoch`: a training worker SIGKILLs the cycle driver at the first step of epoch 1 (after epoch 0's
  checkpoint; needs train.epochs >= 2), through `ray_al.train.FaultInjection`.
"""
from __future__ import annotations

import os
import signal

KILL_AT = "RAY_AL_KILL_AT"
KILL_MARKER = "RAY_AL_KILL_MARKER"
KILL_NTH = "RAY_AL_KILL_NTH"
POINTS = ("train.epoch", "train.done", "embed.written", "embed.done", "select.written", "select.done",
          "label.committed", "label.done", "round.committed", "import.committed", "sweep.result")
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
