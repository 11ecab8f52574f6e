"""ray_al.core.faults itself: a kill point kills only where it is armed, once per marker, and every named
point has its call site (so a drill that names it cannot silently run through)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ray_al.core.faults import HOLD_POINTS, KILL_AT, KILL_MARKER, KILL_NTH, POINTS
from tests.test_cycle import REPO

PROBE = "from ray_al.core.faults import kill_point; kill_point('embed.written'); print('went past')"


def probe(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True)


def test_an_armed_point_kills_once_and_leaves_its_marker(tmp_path):
    marker = tmp_path / "marker"
    env = {KILL_AT: "embed.written", KILL_MARKER: str(marker)}
    first = probe(env)
    assert first.returncode == -signal.SIGKILL and "went past" not in first.stdout
    assert "killed at embed.written" in marker.read_text()
    again = probe(env)  # the resumed run goes past it
    assert again.returncode == 0 and "went past" in again.stdout


def test_other_points_and_no_setting_do_nothing(tmp_path):
    for env in ({KILL_AT: "select.written", KILL_MARKER: str(tmp_path / "m")}, {}):
        run = probe(env)
        assert run.returncode == 0 and "went past" in run.stdout
    assert not (tmp_path / "m").exists()


def test_nth_kills_at_the_nth_reach_of_the_point(tmp_path):
    reaches = "from ray_al.core.faults import kill_point\nfor i in range(1, 5):\n    kill_point('sweep.result'); print(i, flush=True)"
    env = {KILL_AT: "sweep.result", KILL_MARKER: str(tmp_path / "m"), KILL_NTH: "3"}
    run = subprocess.run([sys.executable, "-c", reaches], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL and run.stdout.split() == ["1", "2"]


@pytest.mark.parametrize("point", POINTS)
def test_every_point_has_one_call_site(point):
    source = "\n".join(p.read_text() for p in (REPO / "ray_al").rglob("*.py"))
    call = r"\barmed\(" if point == "train.epoch" else r"kill_point\("
    assert len(re.findall(call + re.escape(f'"{point}"') + r"\)", source)) == 1


@pytest.mark.parametrize("point", HOLD_POINTS)
def test_every_hold_point_has_one_call_site(point):
    source = "\n".join(p.read_text() for p in (REPO / "ray_al").rglob("*.py"))
    assert len(re.findall(r"hold_point\(" + re.escape(f'"{point}"') + r", node_id\)", source)) == 1
