"""Named kill points for fault drills: SIGKILL this process where a test says, not where timing puts it.

    RAY_AL_KILL_AT=embed.written RAY_AL_KILL_MARKER=/tmp/killed python -m ray_al.cycle ...

`kill_point(name)` does nothing unless `RAY_AL_KILL_AT` names `name`. Then it writes the marker file
`RAY_AL_KILL_MARKER` and SIGKILLs the process; once the marker exists the point is passed, so a resumed
run with the same environment goes on. Without a marker the point kills every time it is reached.
The points (docs/RELIABILITY.md lists them with their tests):

* cycle driver, `ray_al.loop`: `train.done`, `embed.written`, `embed.done`, `select.written`,
  `select.done`, `label.committed`, `label.done`, `round.committed`;
* `python -m ray_al.label import`, `ray_al.oracle`: `import.committed`;
* `train.epoch`: a training worker SIGKILLs the cycle driver at the first step of epoch 1 (after epoch 0's
  checkpoint; needs train.epochs >= 2), through `ray_al.train.FaultInjection`.
"""
from __future__ import annotations

import os
import signal

KILL_AT = "RAY_AL_KILL_AT"
KILL_MARKER = "RAY_AL_KILL_MARKER"
POINTS = ("train.epoch", "train.done", "embed.written", "embed.done", "select.written", "select.done",
          "label.committed", "label.done", "round.committed", "import.committed")


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
    write_marker(marker, f"killed at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
