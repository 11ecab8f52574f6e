"""Ledger: validation, immutability, atomic commit/load on local dirs and S3, crash recovery."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import threading
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import storage
from ray_al.run.ledger import Ledger, LedgerError
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3").uri(f"ledger-{uuid.uuid4().hex[:8]}")


def test_add_builds_rows_and_keeps_the_original():
    empty = Ledger.empty("int64")
    l1 = empty.add([5, 3, 9], [0, 2, 1], 0, "initial", num_classes=3)
    l2 = l1.add(np.array([7]), np.array([2]), 1, "query", num_classes=3)
    assert len(empty) == 0 and len(l1) == 3 and len(l2) == 4  # add never mutates
    assert l2.ids.tolist() == [5, 3, 9, 7] and l2.labels.tolist() == [0, 2, 1, 2]
    assert l2.rounds.tolist() == [0, 0, 0, 1]
    assert l2.sources.tolist() == ["initial"] * 3 + ["query"]
    assert l2.table.schema.field("id").type == pa.int64()
    assert l2.labels_by_id() == {5: 0, 3: 2, 9: 1, 7: 2}
    assert l2.contains([7, 8, 5]).tolist() == [True, False, True]
    assert l2.up_to_round(0).ids.tolist() == [5, 3, 9]


def test_without_round_keeps_initial_labels():
    led = (Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=2)
           .add([3], [1], 0, "query", num_classes=2).add([4], [0], 1, "query", num_classes=2)
           .add([5], [1], 1, "import", num_classes=2))
    assert led.without_round(0).ids.tolist() == [1, 2, 4, 5]
    assert led.without_round(1).ids.tolist() == [1, 2, 3]
    assert led.without_round(1, sources=("import",)).ids.tolist() == [1, 2, 3, 4]


def test_string_ids_and_type_inference():
    led = Ledger.empty().add(["a", "b"], [1, 0], 0, "initial", num_classes=2)
    assert led.id_type == "string" and led.ids.tolist() == ["a", "b"]
    with pytest.raises(LedgerError, match="holds string ids but the batch has int64"):
        led.add([3], [1], 1, "query", num_classes=2)
    with pytest.raises(LedgerError, match="all be integers or all be strings"):
        Ledger.empty().add([1, "x"], [0, 0], 0, "initial", num_classes=2)


def test_rejects_duplicates_in_batch_naming_them():
    with pytest.raises(LedgerError) as ei:
        Ledger.empty("int64").add([1, 2, 1, 4, 2], [0] * 5, 1, "query", num_classes=2)
    msg = str(ei.value)
    assert "2 ids appear more than once" in msg and "1 at positions [0, 2]" in msg
    assert "2 at positions [1, 4]" in msg


def test_rejects_already_labeled():
    led = Ledger.empty("int64").add([1, 2, 3], [0, 1, 0], 0, "initial", num_classes=2)
    with pytest.raises(LedgerError, match=r"2 ids are already labeled: \[1, 3\]"):
        led.add([1, 10, 3], [0, 0, 0], 1, "query", num_classes=2)


def test_rejects_labels_outside_range_and_non_integers():
    led = Ledger.empty("string")
    # -1 is OOD_LABEL ("none of these classes"); any other negative is refused
    with pytest.raises(LedgerError, match=r"2 labels are outside range\(3\).*'b'->3.*'c'->-2"):
        led.add(["a", "b", "c"], [0, 3, -2], 0, "initial", num_classes=3)
    with pytest.raises(LedgerError, match="non-integer"):
        led.add(["a", "b"], [0.0, 1.5], 0, "initial", num_classes=3)
    with pytest.raises(LedgerError, match="non-integer"):
        led.add(["a"], ["cat"], 0, "initial", num_classes=3)
    with pytest.raises(LedgerError, match="non-integer"):
        led.add(["a"], [True], 0, "initial", num_classes=3)
    with pytest.raises(LedgerError, match="2 ids but 1 labels"):
        led.add(["a", "b"], [0], 0, "initial", num_classes=3)
    with pytest.raises(LedgerError, match="source must be one of"):
        led.add(["a"], [0], 0, "oracle", num_classes=3)


def test_rejects_ids_outside_pool_and_truncates_long_lists():
    pool = set(range(100))
    with pytest.raises(LedgerError) as ei:
        Ledger.empty("int64").add(list(range(90, 115)), [0] * 25, 0, "initial", num_classes=2,
                                  pool_ids=pool)
    msg = str(ei.value)
    # 100..114 are outside: 15 ids, the message shows 10 and counts the rest
    assert "15 ids are not in the pool" in msg and "[100, 101" in msg and "and 5 more (15 in all)" in msg
    assert "114" not in msg


def test_several_problems_reported_together():
    led = Ledger.empty("int64").add([1], [0], 0, "initial", num_classes=2)
    with pytest.raises(LedgerError) as ei:
        led.add([1, 2, 2, 3], [0, 0, 0, 7], 1, "query", num_classes=2)
    msg = str(ei.value)
    assert "already labeled" in msg and "more than once" in msg and "outside range(2)" in msg


def test_commit_load_roundtrip(run_uri):
    assert len(Ledger.load(run_uri)) == 0
    l1 = Ledger.empty("int64").add([10, 11], [1, 0], 0, "initial", num_classes=2).commit(run_uri)
    assert l1.version == 1
    l2 = Ledger.load(run_uri).add([12], [1], 1, "query", num_classes=2).commit(run_uri)
    assert l2.version == 2
    got = Ledger.load(run_uri)
    assert got.version == 2 and got.table.equals(l2.table)
    names = storage.listdir(storage.join(run_uri, "ledger"))
    assert names[:3] == ["MANIFEST.json", "commit-000001.json", "commit-000002.json"]
    assert [n[:14] for n in names[3:]] == ["ledger-000001-", "ledger-000002-"]
    # the manifest describes the file independently of our reader
    manifest = storage.read_json(storage.join(run_uri, "ledger", "MANIFEST.json"))
    data = storage.read_bytes(storage.join(run_uri, "ledger", manifest["file"]))
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["rows"] == 3
    assert pq.read_table(pa.BufferReader(data)).column("id").to_pylist() == [10, 11, 12]
    # the first version is untouched (never edited in place)
    v1_file = storage.read_json(storage.join(run_uri, "ledger", "commit-000001.json"))["file"]
    v1 = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(run_uri, "ledger", v1_file))))
    assert v1.column("id").to_pylist() == [10, 11]


class _Killed(BaseException):
    """The writer's process dies here (not an Exception: nothing in commit may catch it)."""


def test_interrupted_commit_is_ignored(run_uri, monkeypatch):
    """A writer killed between writing its new parquet and creating the commit marker leaves what commit
    itself wrote, ledger-000002-<token>.parquet with no marker: load gives the previous state."""
    l1 = Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=2).commit(run_uri)
    l2 = l1.add([3, 4], [1, 1], 1, "query", num_classes=2)
    ldir = storage.join(run_uri, "ledger")
    before = set(storage.listdir(ldir))

    def killed(*_):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(storage, "create_exclusive", killed)  # the commit point is never reached
        with pytest.raises(_Killed):
            l2.commit(run_uri)
    stray = sorted(set(storage.listdir(ldir)) - before)
    assert len(stray) == 1 and re.fullmatch(r"ledger-000002-[0-9a-f]{8}\.parquet", stray[0]), stray
    got = Ledger.load(run_uri)
    assert got.version == 1 and got.ids.tolist() == [1, 2]
    # the resumed run redoes the step: its own commit, not the stray file, is version 2
    redo = got.add([3, 4], [0, 0], 1, "query", num_classes=2).commit(run_uri)
    assert redo.version == 2 and Ledger.load(run_uri).labels.tolist() == [0, 1, 0, 0]
    assert storage.read_json(storage.join(ldir, "MANIFEST.json"))["file"] != stray[0]


def test_tampered_file_is_detected(tmp_path):
    run = str(tmp_path / "run")
    Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=2).commit(run)
    other = Ledger.empty("int64").add([1, 2], [1, 1], 0, "initial", num_classes=2)
    committed = storage.read_json(storage.join(run, "ledger", "MANIFEST.json"))["file"]
    storage.write_parquet_atomic(storage.join(run, "ledger", committed), other.table)
    with pytest.raises(LedgerError, match="does not match its manifest"):
        Ledger.load(run)


def test_stale_commit_is_refused(tmp_path):
    run = str(tmp_path / "run")
    base = Ledger.empty("int64").add([1], [0], 0, "initial", num_classes=2).commit(run)
    a = base.add([2], [1], 1, "query", num_classes=2)
    b = base.add([3], [1], 1, "import", num_classes=2)
    a.commit(run)
    with pytest.raises(LedgerError, match="another process committed"):
        b.commit(run)
    assert Ledger.load(run).ids.tolist() == [1, 2]


def test_empty_load_takes_id_type_from_run_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"id_type": "string", "num_classes": 2}))
    led = Ledger.load(str(run))
    assert led.id_type == "string" and led.table.schema.field("id").type == pa.string()


def test_to_csv(tmp_path):
    led = Ledger.empty("string").add(["x", "y"], [1, 0], 0, "initial", num_classes=2)
    led.to_csv(str(tmp_path / "l.csv"))
    rows = list(csv.DictReader(open(tmp_path / "l.csv")))
    assert [(r["id"], int(r["label"]), int(r["round"]), r["source"]) for r in rows] == \
        [("x", 1, 0, "initial"), ("y", 0, 0, "initial")]


def test_a_commit_whose_pointer_swap_died_is_still_loaded(tmp_path):
    """Killed after the commit marker, before MANIFEST.json moved: the marker is the commit."""
    run = str(tmp_path / "run")
    base = Ledger.empty("int64").add([1], [0], 0, "initial", num_classes=2).commit(run)
    before = storage.read_bytes(storage.join(run, "ledger", "MANIFEST.json"))
    base.add([2], [1], 1, "query", num_classes=2).commit(run)
    storage.write_bytes_atomic(storage.join(run, "ledger", "MANIFEST.json"), before)  # the swap never happened
    got = Ledger.load(run)
    assert got.version == 2 and got.ids.tolist() == [1, 2]
    with pytest.raises(LedgerError, match="another process committed"):
        base.add([3], [1], 1, "query", num_classes=2).commit(run)  # stale against the marker, not the pointer


_start = None  # each writer's barrier (set by _set_start in the pool's processes)


def _set_start(barrier) -> None:
    global _start
    _start = barrier


def _commit_ids_with_retries(run: str, ids: list) -> int:
    """One writer: load, add one id, commit; on a refused commit reload and apply it again. The first
    commit waits for every writer to have loaded the same version, so that they race for it."""
    refused = 0
    for n, i in enumerate(ids):
        for _ in range(100):  # bounded: a ledger left inconsistent by a lost commit refuses every load
            try:
                batch = Ledger.load(run).add([i], [i % 2], 1, "import", num_classes=2)
                if n == 0 and refused == 0:
                    try:
                        _start.wait(timeout=60)
                    except threading.BrokenBarrierError:  # writers that never meet: still commit
                        pass
                batch.commit(run)
                break
            except LedgerError:
                refused += 1
    return refused


def test_concurrent_writers_never_lose_a_commit(tmp_path):
    """Six processes commit 5 labels each to one ledger at once, each retrying what was refused: every
    label is in the final ledger (a lost commit would drop some), each version was committed once, and
    commits were refused (the writers did contend: ones that ran one after another would prove nothing)."""
    import multiprocessing

    run = str(tmp_path / "run")
    Ledger.empty("int64").add([0], [0], 0, "initial", num_classes=2).commit(run)
    batches = [list(range(1 + 5 * w, 6 + 5 * w)) for w in range(6)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6, initializer=_set_start, initargs=(ctx.Barrier(6),)) as pool:
        refused = pool.starmap(_commit_ids_with_retries, [(run, b) for b in batches])
    got = Ledger.load(run)
    assert sorted(got.ids.tolist()) == list(range(31)), f"lost labels; refused commits per writer: {refused}"
    assert got.version == 31
    markers = [n for n in storage.listdir(storage.join(run, "ledger")) if n.startswith("commit-")]
    assert len(markers) == 31
    # Six writers that all loaded version 1 race for version 2: five must be refused and retry.
    assert sum(refused) >= 5, f"no contention: refused commits per writer {refused}"
