"""tests/pinned.py's diff names each round's changed ids (no Ray: the cycles that check the pins are in
tests/test_cycle.py and tests/faults/test_kill_points.py)."""
from __future__ import annotations

import json

import pytest

from tests import pinned


def test_a_changed_selection_is_named_by_round_and_id():
    rows = [(1, 0, 0, "initial"), (2, 1, 0, "initial"), (7, 1, 1, "query"), (5, 0, 1, "query")]
    assert pinned.by_round(rows) == {"0": [1, 2], "1": [5, 7]}
    want = {"0": [1, 2], "1": [5, 7]}
    assert pinned.selection_diff(want, pinned.by_round(rows)) == ""
    diff = pinned.selection_diff(want, {"0": [1, 2], "1": [5, 9], "2": [3]})
    print(diff)
    assert diff.splitlines() == ["round 1: 1 pinned ids no longer selected [7], 1 newly selected [9]",
                                 "round 2: 0 pinned ids no longer selected [], 1 newly selected [3]"]


def test_every_pinned_run_is_checked_and_well_formed():
    pins = json.loads(pinned.PINS.read_text())
    runs = {k: v for k, v in pins.items() if not k.startswith("_")}
    assert set(runs) == {"smoke cycle", "default at the drills' sizes"}, sorted(runs)
    for name, run in runs.items():
        assert run["command"].startswith("python -m ray_al.cycle"), name
        ids = run["ids_by_round"]
        assert list(ids) == ["0", "1"] and all(v == sorted(set(v)) for v in ids.values()), name
        assert not set(ids["0"]) & set(ids["1"]), name


def test_check_pinned_fails_naming_the_change(monkeypatch, tmp_path):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"run": {"command": "python -m ray_al.cycle", "ids_by_round": {"0": [1], "1": [2]}}}))
    monkeypatch.setattr(pinned, "PINS", path)
    monkeypatch.delenv(pinned.REPIN, raising=False)
    pinned.check_pinned("run", "python -m ray_al.cycle", [(1, 0, 0, "initial"), (2, 0, 1, "query")])
    with pytest.raises(AssertionError, match=r"round 1: 1 pinned ids no longer selected \[2\], 1 newly selected \[3\]"):
        pinned.check_pinned("run", "python -m ray_al.cycle", [(1, 0, 0, "initial"), (3, 0, 1, "query")])
