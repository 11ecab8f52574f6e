"""The training input's labeled read (`data.reader.read_ids`, `read_split(include_ids=...)`): exactly the
rows of the wanted ids, int or string, found by reading only the row groups that hold them.

docs/RESULTS.md measured the read-everything version at 57-60 s per round on 100k and 1M-row pools. Here a
pool of 4 files x 10 row groups of 50 rows (2 KiB of random bytes an image): the lookup is checked on its
counters (`lookup.LookupStats`), and the Ray read on an s3:// pool by the bytes an S3 endpoint in between
(tests/s3gate.py) served: well under the pool's size, where reading every row serves all of it.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import storage
from ray_al.data import lookup
from tests.s3gate import gate  # noqa: F401  (a fixture)

FILES, ROWS_PER_FILE, GROUP_ROWS, IMAGE_BYTES = 4, 500, 50, 2048
N = FILES * ROWS_PER_FILE
WANTED_POS = [3, 4, 777, 1240, 1999]  # row groups 0 (twice), 15, 24, 39
GROUPS_HOLDING = 4


def pool_ids(kind: str) -> pa.Array:
    """Sorted ids, as `ingest` writes them: 0..N-1, or paths in class folders."""
    if kind == "int":
        return pa.array(np.arange(N, dtype=np.int64))
    return pa.array([f"class{i * 3 // N}/{i:06d}.png" for i in range(N)], pa.string())


def pool_table(kind: str) -> pa.Table:
    rng = np.random.default_rng(0)
    images = [rng.bytes(IMAGE_BYTES) for _ in range(N)]
    return pa.table({"id": pool_ids(kind), "image": pa.array(images, pa.binary()),
                     "label": pa.array(np.arange(N) % 10, pa.int64())})


def write_pool(table: pa.Table, uri: str) -> None:
    """FILES Parquet files of GROUP_ROWS-row groups, and a `_classes.json` as `ingest` leaves."""
    fs, path = storage.pyarrow_fs(uri)
    fs.create_dir(path, recursive=True)
    for k in range(FILES):
        pq.write_table(table.slice(k * ROWS_PER_FILE, ROWS_PER_FILE), f"{path}/part-{k:02d}.parquet",
                       filesystem=fs, row_group_size=GROUP_ROWS)
    storage.write_json_atomic(storage.join(uri, "_classes.json"), {"classes": []})


def wanted(kind: str) -> list:
    return [pool_ids(kind)[i].as_py() for i in WANTED_POS]


def expected_rows(table: pa.Table, ids: list) -> dict:
    return {i: table.filter(pa.compute.equal(table.column("id"), i)).column("image")[0].as_py() for i in ids}


@pytest.fixture(scope="module", params=["int", "str"])
def local_pool(request, tmp_path_factory):
    table = pool_table(request.param)
    uri = str(tmp_path_factory.mktemp(f"pool_{request.param}") / "pool")
    write_pool(table, uri)
    return request.param, table, uri


def test_lookup_reads_only_the_row_groups_holding_the_ids(local_pool) -> None:
    kind, table, uri = local_pool
    ids = wanted(kind) + ([N + 5] if kind == "int" else ["class9/none.png"])  # one id the pool lacks
    rows, stats = lookup.rows_by_id(uri, ids, columns=["id", "image"])
    assert rows.column_names == ["id", "image"]
    got = dict(zip(rows.column("id").to_pylist(), rows.column("image").to_pylist()))
    assert got == expected_rows(table, wanted(kind))
    assert stats.to_dict() == {"files": FILES, "row_groups": N // GROUP_ROWS, "row_groups_scanned": GROUPS_HOLDING,
                               "row_groups_read": GROUPS_HOLDING, "rows": len(WANTED_POS)}


def test_a_hundred_ids_still_prune_by_statistics(local_pool) -> None:
    """100 ids in the first two row groups: every other row group is ruled out by its statistics (pyarrow
    26's own isin pruning let every row group through past ~50 ids)."""
    kind, table, uri = local_pool
    ids = table.column("id").to_pylist()[:100]
    rows, stats = lookup.rows_by_id(uri, ids, columns=["id"])
    assert rows.column("id").to_pylist() == ids
    assert (stats.row_groups_scanned, stats.row_groups_read) == (2, 2)


def test_lookup_accepts_the_ids_as_callers_hold_them(local_pool) -> None:
    """numpy arrays (the train request's sorted ids), an int32 array, an Arrow array; no ids at all."""
    kind, table, uri = local_pool
    as_numpy = np.asarray(wanted(kind), dtype=np.int32 if kind == "int" else object)
    for ids in (as_numpy, pa.array(wanted(kind))):
        rows, _ = lookup.rows_by_id(uri, ids)
        assert rows.column_names == ["id", "image", "label"]
        assert sorted(rows.column("id").to_pylist()) == sorted(wanted(kind))
    rows, stats = lookup.rows_by_id(uri, [], columns=["id"])
    assert rows.num_rows == 0 and rows.schema.field("id").type == table.schema.field("id").type
    assert stats.row_groups_scanned == 0


def test_unsorted_ids_cost_an_id_scan_not_a_full_read(tmp_path) -> None:
    """A user's pool in any order: statistics rule nothing out, so every `id` column is read, but the
    images only of the row groups holding a wanted id."""
    table = pool_table("int")
    table = table.take(pa.array(np.random.default_rng(1).permutation(N)))
    write_pool(table, str(tmp_path / "pool"))
    rows, stats = lookup.rows_by_id(str(tmp_path / "pool"), wanted("int"), columns=["id"])
    assert sorted(rows.column("id").to_pylist()) == wanted("int")
    assert stats.row_groups_scanned == N // GROUP_ROWS and stats.row_groups_read <= len(WANTED_POS)


def test_ids_of_the_wrong_type_name_the_file(tmp_path) -> None:
    """String ids asked of an int-id pool (any id casts to a string, so only this way round can fail)."""
    write_pool(pool_table("int"), str(tmp_path / "pool"))
    with pytest.raises(TypeError, match=r"part-00\.parquet.*pool's id type"):
        lookup.rows_by_id(str(tmp_path / "pool"), ["a.png"])


def test_parquet_files_are_the_ones_ray_reads(tmp_path) -> None:
    write_pool(pool_table("int"), str(tmp_path / "pool"))
    (tmp_path / "pool" / ".hidden.parquet").write_bytes(b"x")
    (tmp_path / "pool" / "_tmp").mkdir()
    (tmp_path / "pool" / "_tmp" / "part.parquet").write_bytes(b"x")
    (tmp_path / "pool" / "notes.txt").write_text("x")
    names = [os.path.basename(f) for f in lookup.parquet_files(str(tmp_path / "pool"))]
    assert names == [f"part-{k:02d}.parquet" for k in range(FILES)]
    with pytest.raises(FileNotFoundError, match="data.pool"):
        lookup.parquet_files(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------ through Ray, on S3


@pytest.mark.parametrize("where", ["driver", "tasks"])
@pytest.mark.parametrize("kind", ["int", "str"])
def test_labeled_read_on_s3_serves_only_their_row_groups(ray_local, gate, s3_server, monkeypatch, kind,
                                                        where) -> None:
    from ray_al.data import reader

    table = pool_table(kind)
    uri = s3_server.uri(f"labeled-read-{uuid.uuid4().hex[:8]}", "pool")
    write_pool(table, uri)
    pool_bytes = storage.total_bytes(uri)
    if where == "tasks":  # more ids than the driver looks up: Ray tasks do, file by file
        monkeypatch.setattr(reader, "DRIVER_LOOKUP_MAX_IDS", 2)
    before = gate.bytes_answered
    ds = reader.read_split(uri, columns=["id", "image"], include_ids=np.asarray(wanted(kind)))
    rows = ds.to_arrow() if hasattr(ds, "to_arrow") else pa.Table.from_pylist(ds.take_all())
    served = gate.bytes_answered - before
    got = dict(zip(rows.column("id").to_pylist(), rows.column("image").to_pylist()))
    assert got == expected_rows(table, wanted(kind))
    # 4 of 40 row groups hold the ids (~10% of the images) plus the files' footers; reading every row
    # serves the whole pool
    assert served < pool_bytes / 4, (served, pool_bytes)
    if where == "driver":
        _, info = reader.read_ids(uri, wanted(kind), ["id"])
        assert (info["where"], info["row_groups_read"], info["rows"]) == ("driver", GROUPS_HOLDING, len(WANTED_POS))
