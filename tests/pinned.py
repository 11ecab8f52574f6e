"""What the default configuration selects, pinned: tests/pinned_selection.json holds, per pinned run, the
ids each ledger round labels (round 0: the seed set; round r: the batch round r-1 queried). A change to
selection, training or the data fails the test that runs the cycle, naming each round's ids that changed.
The pins hold for torch's AVX2 kernels, which tests/conftest.py selects for every test and the Ray it starts
(the native kernels of another CPU train another model, and select other ids).

Regenerate after a change you meant (then review `git diff tests/pinned_selection.json`):

    RAY_AL_REPIN=1 python -m pytest tests/test_cycle.py tests/faults/test_kill_points.py -k "end_to_end or pinned"
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PINS = Path(__file__).with_name("pinned_selection.json")
REPIN = "RAY_AL_REPIN"


def by_round(ledger_rows: list[tuple]) -> dict[str, list]:
    """ledger rows (id, label, round, source) -> {"round": sorted ids}."""
    out: dict[str, list] = {}
    for i, _, r, _ in ledger_rows:
        out.setdefault(str(r), []).append(i)
    return {r: sorted(ids) for r, ids in sorted(out.items(), key=lambda kv: int(kv[0]))}


def selection_diff(want: dict[str, list], got: dict[str, list]) -> str:
    """Per round, the ids no longer selected and those newly selected; "" when equal."""
    lines = []
    for r in sorted(set(want) | set(got), key=int):
        pinned, now = set(want.get(r, [])), set(got.get(r, []))
        lost, new = sorted(pinned - now), sorted(now - pinned)
        if lost or new:
            lines.append(f"round {r}: {len(lost)} pinned ids no longer selected {lost}, "
                         f"{len(new)} newly selected {new}")
    return "\n".join(lines)


def dumps(pins: dict) -> str:
    """The pins as JSON with each round's ids on one line (a repin's git diff names the rounds)."""
    lines = ["{"]
    for n, (name, run) in enumerate(pins.items()):
        end = "," if n < len(pins) - 1 else ""
        if not isinstance(run, dict):
            lines.append(f" {json.dumps(name)}: {json.dumps(run)}{end}")
            continue
        rounds = run["ids_by_round"]
        lines += [f" {json.dumps(name)}: {{", f"  \"command\": {json.dumps(run['command'])},", '  "ids_by_round": {']
        lines += [f"   {json.dumps(r)}: {json.dumps(ids)}{',' if i < len(rounds) - 1 else ''}"
                  for i, (r, ids) in enumerate(rounds.items())]
        lines += ["  }", f" }}{end}"]
    return "\n".join(lines + ["}"]) + "\n"


def check_pinned(name: str, command: str, ledger_rows: list[tuple]) -> None:
    """Assert the run `name` (made by `command`) labelled the pinned ids; with RAY_AL_REPIN=1, pin them."""
    pins = json.loads(PINS.read_text())
    got = by_round(ledger_rows)
    if os.environ.get(REPIN) == "1":
        pins[name] = {"command": command, "ids_by_round": got}
        PINS.write_text(dumps(pins))
        return
    assert name in pins, f"{PINS} pins no run {name!r}: run with {REPIN}=1 to pin it (module docstring)"
    diff = selection_diff(pins[name]["ids_by_round"], got)
    assert not diff, (f"{command} selects other ids than {PINS.name} pins for {name!r} (a change to "
                      f"selection, training or the data; if meant, repin: tests/pinned.py):\n{diff}")
