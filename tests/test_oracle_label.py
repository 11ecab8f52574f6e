"""Oracles and the label CLI: simulated answers, export, validated import (nothing half-written)."""
from __future__ import annotations

import csv
import io as pyio
import os
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_al.core import storage
from ray_al.run.ledger import Ledger
from ray_al.run.oracle import (LabelImportError, OracleError, SimulatedOracle, export_queries, import_labels,
                           load_image_bytes, query_uris, read_pool_rows)
from ray_al.run.rundir import SEED_ROUND, RunDir
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "bird", "cat"]


def _png(value: int) -> bytes:
    buf = pyio.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(uri: str, *, pool_uri: str | None = None, uris=None) -> RunDir:
    """A run paused for labels: initial labels {1,2} committed, round 1 queried ids [10, 11, 12]."""
    info = {"config": {"al": {"oracle": "file"}}, "num_classes": 3, "class_names": CLASSES,
            "id_type": "int64"}
    if pool_uri:
        info["pool"] = {"uri": pool_uri, "id_column": "id", "image_column": "image", "path_column": "path"}
    rd = RunDir.create(uri, info)
    Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=3).commit(rd)
    rd.mark_done(0, "select", {})
    rd.mark_done(0, "label", {})
    rd.commit_round(0, {"round": 0, "num_labels": 2, "test_accuracy": 0.4})
    rd.write_queries(1, [10, 11, 12], uris or [None, None, None])
    rd.mark_done(1, "select", {"n": 3})
    return rd


def write_csv(path, rows, header=("id", "label")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def manifest_bytes(rd: RunDir) -> bytes:
    return storage.read_bytes(storage.join(rd.uri, "ledger", "MANIFEST.json"))


# ----------------------------------------------------------------------------- simulated oracle
def test_simulated_oracle_answers_in_order():
    pool = pa.table({"id": [5, 6, 7, 8], "label": [2, None, 0, 1]})
    oracle = SimulatedOracle.from_table(pool)
    assert oracle.answer(np.array([8, 5, 7])).tolist() == [1, 2, 0]
    with pytest.raises(OracleError, match=r"no label for 2 queried ids \[6, 99\].*al.oracle=file"):
        oracle.answer([5, 6, 99])
    with pytest.raises(OracleError, match="no 'label' column"):
        SimulatedOracle.from_table(pa.table({"id": [1]}))


# ----------------------------------------------------------------------------- import
def test_import_commits_ints_and_class_names(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    labels = write_csv(tmp_path / "l.csv", [(12, "Cat"), (10, 0), (11, "bird")])
    led = import_labels(rd, labels)
    assert led.version == 2
    got = Ledger.load(rd)
    assert got.labels_by_id() == {1: 0, 2: 1, 12: 2, 10: 0, 11: 1}
    rows = got.table.to_pylist()
    assert [(r["round"], r["source"]) for r in rows[2:]] == [(2, "import")] * 3
    assert rd.is_done(1, "label") and rd.step_payload(1, "label")["rows"] == 3
    assert rd.pending_query_round() is None


@pytest.mark.parametrize("rows, pattern", [
    ([(10, 0), (11, 1), (12, 2), (99, 1)], r"1 ids are not in the pending query batch of round 1.*line 5: 99"),
    ([(10, 0), (2, 1), (11, 1), (12, 2)], r"\(1 of them are already labeled\).*line 3: 2"),
    ([(10, 0), (11, 1), (10, 2), (12, 2)], r"1 ids appear more than once.*line 4: 10 \(first on line 2\)"),
    ([(10, 0), (11, 3), (12, "dog")], r"2 labels are outside the class set.*line 3: id 11 label '3'"
                                      r".*line 4: id 12 label 'dog'.*'airplane', 'bird', 'cat'"),
    ([(10, 0), ("x1", 1), (12, 2)], r"not integers.*line 3: 'x1'"),
    ([(10, 0), (11, "__import__('os').getpid()"), (12, 2)], r"outside the class set.*line 3: id 11 label \"__import__"),
    ([(10, 0), (12, 2)], r"1 of the 3 queried ids have no label: \[11\].*--allow-partial"),
    ([(10, 0), (11, ""), (12, 2)], r"1 of the 3 queried ids have no label: \[11\]"),
])
def test_import_rejects_and_writes_nothing(tmp_path, rows, pattern):
    rd = make_run(str(tmp_path / "run"))
    before = manifest_bytes(rd)
    with pytest.raises(LabelImportError, match=pattern) as ei:
        import_labels(rd, write_csv(tmp_path / "l.csv", rows))
    assert "nothing was imported" in str(ei.value)
    assert manifest_bytes(rd) == before
    names = storage.listdir(storage.join(rd.uri, "ledger"))
    assert names[:2] == ["MANIFEST.json", "commit-000001.json"] and len(names) == 3  # + ledger-000001-*.parquet
    assert not rd.is_done(1, "label") and rd.pending_query_round() == 1


def test_import_header_checked(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    with pytest.raises(LabelImportError, match="needs columns 'id' and 'label'"):
        import_labels(rd, write_csv(tmp_path / "l.csv", [(10, 0)], header=("image", "class")))


def test_import_partial(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    import_labels(rd, write_csv(tmp_path / "l.csv", [(10, 2), (11, "")]), allow_partial=True)
    assert Ledger.load(rd).labels_by_id() == {1: 0, 2: 1, 10: 2}
    assert rd.step_payload(1, "label")["unanswered"] == 2


def test_reimport_after_crash_before_marker_does_not_duplicate(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    # the earlier import committed the ledger and died before marking the label step done
    Ledger.load(rd).add([10, 11, 12], [0, 0, 0], 2, "import", num_classes=3).commit(rd)
    import_labels(rd, write_csv(tmp_path / "l.csv", [(10, 1), (11, 1), (12, 2)]))
    got = Ledger.load(rd)
    assert len(got) == 5 and got.labels_by_id() == {1: 0, 2: 1, 10: 1, 11: 1, 12: 2}


def test_no_pending_round(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    rd.mark_done(1, "label", {})
    with pytest.raises(OracleError, match="no pending query batch"):
        export_queries(rd, str(tmp_path / "q.csv"))


# ----------------------------------------------------------------------------- export
def test_export_with_uris_then_import_the_filled_file(tmp_path):
    rd = make_run(str(tmp_path / "run"), uris=["/img/10.jpg", "s3://b/11.jpg", "/img/12.jpg"])
    out = str(tmp_path / "q.csv")
    assert export_queries(rd, out) == 3
    rows = list(csv.DictReader(open(out)))
    assert [(r["id"], r["uri"], r["label"]) for r in rows] == \
        [("10", "/img/10.jpg", ""), ("11", "s3://b/11.jpg", ""), ("12", "/img/12.jpg", "")]
    for r, lab in zip(rows, ["cat", "0", "bird"]):
        r["label"] = lab
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "uri", "label"])
        w.writeheader()
        w.writerows(rows)
    import_labels(rd, out)
    assert Ledger.load(rd).labels_by_id() == {1: 0, 2: 1, 10: 2, 11: 0, 12: 1}


def test_export_image_bytes_from_pool(tmp_path):
    pool_uri = str(tmp_path / "pool.parquet")
    images = {i: _png(i) for i in range(1, 15)}
    storage.write_parquet_atomic(pool_uri, pa.table({"id": list(images), "image": list(images.values())}))
    rd = make_run(str(tmp_path / "run"), pool_uri=pool_uri)
    got = load_image_bytes(rd.pool, [10, 12, 11])
    assert got == {10: images[10], 11: images[11], 12: images[12]}  # only the queried rows
    out, idir = str(tmp_path / "q.csv"), str(tmp_path / "imgs")
    export_queries(rd, out, image_bytes_by_id=got, images_dir=idir)
    rows = list(csv.DictReader(open(out)))
    assert [os.path.basename(r["uri"]) for r in rows] == ["10.png", "11.png", "12.png"]
    for r in rows:
        with Image.open(r["uri"]) as im:
            assert np.asarray(im)[0, 0, 0] == int(r["id"])
    with pytest.raises(OracleError, match="no image bytes for 1 queried ids"):
        export_queries(rd, out, image_bytes_by_id={10: images[10], 11: images[11]}, images_dir=idir)


def test_query_uris_read_only_the_queried_rows(tmp_path):
    pool_uri = str(tmp_path / "pool.parquet")
    storage.write_parquet_atomic(pool_uri, pa.table({"id": ["x/1", "x/2", "y/3", "y/4"],
                                                     "path": ["p1", "p2", "p3", "p4"]}))
    assert query_uris(pool_uri, "path", ["y/3", "x/1"]) == ["p3", "p1"]  # in the order of the queries
    assert query_uris(pool_uri, "image", ["y/3"]) == [None]  # bytes pools: the images are exported instead
    assert read_pool_rows(pool_uri, ["y/3"], ["id", "path"]).to_pylist() == [{"id": "y/3", "path": "p3"}]
    with pytest.raises(OracleError, match="no column"):
        read_pool_rows(pool_uri, ["y/3"], ["id", "image"])


# ----------------------------------------------------------------------------- CLI
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_al.label", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def test_cli_export_import_status(tmp_path):
    pool_uri = str(tmp_path / "pool.parquet")
    storage.write_parquet_atomic(pool_uri, pa.table({"id": [10, 11, 12], "image": [_png(1), _png(2), _png(3)]}))
    rd = make_run(str(tmp_path / "run"), pool_uri=pool_uri)
    out = str(tmp_path / "q.csv")
    p = cli("export", rd.uri, "--out", out, "--images-dir", str(tmp_path / "imgs"))
    assert p.returncode == 0, p.stderr
    assert "wrote 3 queries of round 1" in p.stdout
    assert sorted(os.listdir(tmp_path / "imgs")) == ["10.png", "11.png", "12.png"]

    bad = write_csv(tmp_path / "bad.csv", [(10, 0), (11, 1), (12, 1), (77, 2)])
    p = cli("import", rd.uri, bad)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: rejected") and "line 5: 77" in p.stderr

    good = write_csv(tmp_path / "good.csv", [(10, 0), (11, "cat"), (12, 1)])
    p = cli("import", rd.uri, good)
    assert p.returncode == 0, p.stderr
    assert "imported 3 labels for round 1" in p.stdout

    p = cli("status", rd.uri)
    assert p.returncode == 0, p.stderr
    assert "labels     5" in p.stdout and "committed: [0]" in p.stdout and "no query batch awaiting" in p.stdout


def test_cli_user_errors_exit_2(tmp_path):
    p = cli("status", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "not a ray_al run directory" in p.stderr and "Traceback" not in p.stderr
    rd = make_run(str(tmp_path / "run"))
    p = cli("import", rd.uri, str(tmp_path / "missing.csv"))
    assert p.returncode == 2 and "missing.csv not found" in p.stderr
    p = cli("export", rd.uri, "--out", str(tmp_path / "q.csv"), "--images-dir", str(tmp_path / "i"))
    assert p.returncode == 2 and "records no pool" in p.stderr


def test_cli_on_s3(s3, tmp_path):
    rd = make_run(s3.uri(f"labelrun-{uuid.uuid4().hex[:8]}"), uris=["a", "b", "c"])
    out = s3.uri("exports", f"q-{uuid.uuid4().hex[:6]}.csv")
    env_args = ["--s3-endpoint", s3.endpoint]
    p = cli("export", rd.uri, "--out", out, *env_args)
    assert p.returncode == 0, p.stderr
    assert storage.read_text(out).splitlines() == ["id,uri,label", "10,a,", "11,b,", "12,c,"]
    storage.write_text_atomic(out, "id,uri,label\n10,a,2\n11,b,airplane\n12,c,1\n")
    p = cli("import", rd.uri, out, *env_args)
    assert p.returncode == 0, p.stderr
    assert Ledger.load(rd.uri).labels_by_id() == {1: 0, 2: 1, 10: 2, 11: 0, 12: 1}
    p = cli("status", f"s3://no-bucket-{uuid.uuid4().hex[:6]}/run", *env_args)
    assert p.returncode == 2 and "not a ray_al run directory" in p.stderr and s3.endpoint in p.stderr


def test_pool_oracle_reads_only_the_asked_rows_in_their_order(tmp_path):
    from ray_al.data.pool import labelled_ids
    from ray_al.run.oracle import PoolOracle

    uri = str(tmp_path / "pool.parquet")
    pq.write_table(pa.table({"id": pa.array(["c", "a", "b", "d", "e"]), "label": pa.array([2, 0, None, -1, 1]),
                             "image": pa.array([b""] * 5)}), uri)
    oracle = PoolOracle(uri)
    assert oracle.answer(["e", "c", "a"]).tolist() == [1, 2, 0]
    assert oracle.answer(np.asarray(["d"], dtype=object)).tolist() == [-1]  # "none of these classes"
    assert labelled_ids(uri).to_pylist() == ["a", "c", "d", "e"]  # sorted, the null label left out
    with pytest.raises(OracleError, match=r"no label for 2 queried ids.*'b'.*'zz'"):
        oracle.answer(["a", "b", "zz"])


def test_the_seed_set_as_a_query_batch_becomes_ledger_round_0(tmp_path):
    """A file oracle's seed batch (al.initial other than random): exported and imported like a round's
    queries, committed as round 0; ids outside it are refused naming the seed set."""
    rd = RunDir.create(str(tmp_path / "run"), {"num_classes": 3, "class_names": CLASSES, "id_type": "int64"})
    rd.write_queries(SEED_ROUND, [5, 6, 7])
    rd.mark_done(SEED_ROUND, "select", {"k": 3})
    assert rd.pending_query_round() == SEED_ROUND and rd.rounds() == []  # a batch, not a round of results
    assert export_queries(rd, str(tmp_path / "q.csv")) == 3
    with pytest.raises(LabelImportError, match="not in the pending query batch of the seed set"):
        import_labels(rd, write_csv(tmp_path / "bad.csv", [(5, 0), (6, 1), (7, 2), (8, 0)]))
    ledger = import_labels(rd, write_csv(tmp_path / "l.csv", [(5, 0), (6, 1), (7, "none")]))
    assert [(r["id"], r["label"], r["round"]) for r in ledger.table.to_pylist()] == [(5, 0, 0), (6, 1, 0), (7, -1, 0)]
    assert rd.pending_query_round() is None and rd.is_done(SEED_ROUND, "label")


def test_query_uris_give_remote_sources_and_paths_but_not_relative_names(tmp_path):
    """Where annotators find a query: a path pool's `path`; a byte pool's `path` only when it is a URI a
    labelling tool can fetch (an ingested s3:// prefix), else None (the export writes the bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_al.run.oracle import query_uris

    def pool(name, paths, image=True):
        columns = {"id": pa.array([1, 2, 3]), "path": pa.array(paths)}
        if image:
            columns["image"] = pa.array([b"x", b"y", b"z"])
        pq.write_table(pa.table(columns), tmp_path / name)
        return str(tmp_path / name)

    remote = pool("remote.parquet", [f"s3://b/photos/{i}.jpg" for i in "abc"])
    assert query_uris(remote, "image", [3, 1]) == ["s3://b/photos/c.jpg", "s3://b/photos/a.jpg"]
    relative = pool("relative.parquet", ["train/cat/0.jpg", "train/cat/1.jpg", "train/dog/2.jpg"])
    assert query_uris(relative, "image", [3, 1]) == [None, None]
    paths = pool("paths.parquet", ["/data/a.jpg", "/data/b.jpg", "/data/c.jpg"], image=False)
    assert query_uris(paths, "path", [2]) == ["/data/b.jpg"]
