"""`python -m ray_al.label import` SIGKILLed between its ledger commit and its step marker, and run on a
full disk. The run directory is one paused for labels (tests/test_oracle_label.py's `make_run`); the
import touches no Ray, so these drills take seconds. The reference is the same import, uninterrupted.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from ray_al.run.ledger import Ledger
from ray_al.run.oracle import import_labels
from ray_al.run.rundir import RunDir
from tests.faults.drill import kill_at, launch, ledger_rows
from tests.test_cycle import REPO
from tests.test_oracle_label import make_run, write_csv

ANSWERS = [(10, 0), (11, "bird"), (12, "none")]
# "full disk": no file may grow past this many bytes (RLIMIT_FSIZE); the run lock fits, a ledger does not
FULL_AT = 1024


def uninterrupted(tmp: Path, labels: str) -> Path:
    import_labels(make_run(str(tmp / "reference")), labels)
    return tmp / "reference"


def check_still_pending(rd: RunDir, version: int) -> None:
    assert Ledger.load(rd.uri).version == version
    assert not rd.is_done(1, "label") and rd.pending_query_round() == 1


def test_import_killed_after_its_ledger_commit_is_redone_without_duplicates(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    labels = write_csv(tmp_path / "labels.csv", ANSWERS)
    kill_at("import.committed", "ray_al.label", "import", rd.uri, labels, tmp=tmp_path)
    assert len(Ledger.load(rd.uri)) == 5  # the dead import's commit is in the ledger, unmarked
    check_still_pending(rd, version=2)
    again = launch("ray_al.label", "import", rd.uri, labels, tmp=tmp_path)
    assert again.returncode == 0, again.tail()
    assert rd.is_done(1, "label") and rd.pending_query_round() is None
    assert ledger_rows(Path(rd.uri)) == ledger_rows(uninterrupted(tmp_path, labels))


def test_import_on_a_full_disk_commits_nothing_and_names_the_file(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    labels = write_csv(tmp_path / "labels.csv", ANSWERS)
    # output through pipes: the limit would cut an output file short too
    full = subprocess.run([sys.executable, "-m", "ray_al.label", "import", rd.uri, labels], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_AT, FULL_AT)))
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert f"cannot write {os.path.join(rd.uri, 'ledger', 'ledger-000002-')}" in full.stderr, full.stderr[-3000:]
    check_still_pending(rd, version=1)
    assert not [n for n in os.listdir(os.path.join(rd.uri, "ledger")) if n.startswith(".tmp")]
    retry = launch("ray_al.label", "import", rd.uri, labels, tmp=tmp_path)
    assert retry.returncode == 0, retry.tail()
    assert ledger_rows(Path(rd.uri)) == ledger_rows(uninterrupted(tmp_path, labels))
