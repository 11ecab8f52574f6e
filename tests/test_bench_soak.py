"""bench.soak at test size: 4 rounds of the default loop (resident) and 3 on the per-round path, in one
process on a local Ray; each round's measures and ledger check (docs/RELIABILITY.md, "Long runs (leaks)")."""
from __future__ import annotations

from pathlib import Path

from ray_al.bench import soak
from ray_al.run.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


def test_slope_is_the_least_squares_line():
    rows = [{"round": r, **dict.fromkeys(soak.MEASURES, 3.0 + 2.0 * r)} for r in range(5)]
    assert all(abs(s - 2.0) < 1e-9 for s in soak.slopes(rows).values())
    assert soak.slopes(rows[:1]) == dict.fromkeys(soak.MEASURES, 0.0)


def test_a_lost_query_fails_the_ledger_check(tmp_path):
    """check_ledger on a planted defect: round 0 queried 5 and 6, the ledger holds 5 and 7."""
    import pytest

    from ray_al.core import config as config_mod
    from ray_al.run.rundir import RunDir

    cfg = config_mod.replace(config_mod.load(), al={"initial_size": 2, "budget": 2, "rounds": 1})
    for name, labelled, error in (("good", [5, 6], None), ("lost", [5, 7], "missing"), ("twice", [5, 5], "twice")):
        run = RunDir.create(str(tmp_path / name), {"num_classes": 10, "id_type": "int64"})
        run.write_queries(0, [5, 6])
        ledger = Ledger.load(run.uri, id_type="int64").add([1, 2], [0, 1], 0, "initial", num_classes=10)
        ledger.commit(run.uri)
        table = Ledger.load(run.uri, id_type="int64")
        if error == "twice":  # the ledger itself refuses a repeated id: check_ledger's guard is a backstop
            with pytest.raises(Exception):
                table.add(labelled, [3, 4], 1, "query", num_classes=10)
            continue
        table.add(labelled, [3, 4], 1, "query", num_classes=10).commit(run.uri)
        if error is None:
            soak.check_ledger(run.uri, "int64", 0, cfg, final=False)
        else:
            with pytest.raises(AssertionError, match=error):
                soak.check_ledger(run.uri, "int64", 0, cfg, final=False)


def test_each_round_prints_its_measures():
    row = {"round": 3, "seconds": 12.25, "driver_mib": 800.4, "driver_end_mib": 760.2, "worker_mib": 1500.6,
           "store_mib": 0.25, "actors": 4, "threads": 9, "native_threads": 40, "open_files": 31}
    assert soak.progress_line(row, 100) == ("round 3/100: 12.2 s, driver 800 MiB (at commit 760), worker 1501 MiB, "
                                            "store 0.2 MiB, 4 actors, 9 threads (40 native), 31 open files; ledger ok")


def test_the_drivers_memory_at_commit_is_its_resident_set_now():
    import numpy as np

    before = soak.driver_rss_now()
    held = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert soak.driver_rss_now() - before > 60 and held[-1] == 1.0
