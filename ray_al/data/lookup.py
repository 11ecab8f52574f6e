"""Rows of a Parquet pool by id, reading only the row groups that can hold them (pyarrow only, no Ray).

A round's labeled set is a few hundred rows of a pool of up to millions. Ray Data's read applied the id
predicate after reading every row (57-60 s per round at 100k and 1M rows, docs/RESULTS.md). Here each
file's footer is read, row groups whose `id` statistics (min/max) exclude every wanted id are skipped
(`ingest` writes ids in sorted runs, so most are), the `id` column of the others is read and checked, and
only the row groups that hold a wanted id are read whole. One row group per file at a time is held,
whatever the pool's size.
"""
from __future__ import annotations

import bisect
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ray_al.core import storage

THREADS = 8  # files looked up at once: S3 round trips overlap; at most this many row groups held


@dataclass
class LookupStats:
    """What a lookup read: `row_groups` in the files, `row_groups_scanned` (statistics could not rule them
    out: their `id` column was read), `row_groups_read` (they held a wanted id: the requested columns were
    read), `rows` found."""
    files: int = 0
    row_groups: int = 0
    row_groups_scanned: int = 0
    row_groups_read: int = 0
    rows: int = 0

    def add(self, other: "LookupStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parquet_files(uri: str) -> list[str]:
    """The Parquet files of a file or directory URI, sorted: `.parquet` names, files and folders starting
    with `_` or `.` left out (as pyarrow.dataset's discovery); paths as `storage.pyarrow_fs` gives them."""
    fs, path = storage.pyarrow_fs(uri)
    try:
        info = fs.get_file_info(path)
        is_dir = info.type == pafs.FileType.Directory
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True)) if is_dir else []
    except OSError as e:
        raise storage._translate(uri, e) from e
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"Parquet '{uri}' not found: check data.pool (and for s3:// the bucket and "
                                "data.s3_endpoint).")
    root = path.rstrip("/")
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                  and not any(p.startswith(("_", ".")) for p in posixpath.relpath(i.path, root).split("/")))


def value_set(ids, id_type: pa.DataType, where: str) -> pa.Array:
    """The wanted ids as an Arrow array of the file's `id` type; says which file when they cannot be."""
    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(ids))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type == id_type:
        return arr
    if len(arr) == 0:
        return pa.array([], id_type)
    try:
        return arr.cast(id_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"ids of type {arr.type} cannot be matched with the `id` column ({id_type}) of '{where}': "
                        "pass ids of the pool's id type (int or str).") from e


def _admits(stats, wanted: list) -> bool:
    """Whether a row group whose `id` statistics are `stats` may hold one of `wanted` (sorted): some id
    lies in [min, max]. Parquet orders strings by their UTF-8 bytes, which is Python's str order."""
    if stats is None or not stats.has_min_max:
        return True
    lo = bisect.bisect_left(wanted, stats.min)
    return lo < len(wanted) and wanted[lo] <= stats.max


def candidate_groups(metadata, wanted: list) -> list[int]:
    """The row groups of a file (its footer's `metadata`) whose id statistics admit one of `wanted`, sorted.
    (pyarrow's own pruning, `split_by_row_group(field.isin(...))`, gave up past ~50 ids in pyarrow 26:
    every row group passed.)"""
    column = metadata.schema.to_arrow_schema().get_field_index("id")
    return [i for i in range(metadata.num_row_groups) if _admits(metadata.row_group(i).column(column).statistics,
                                                                    wanted)]


def file_rows(fs: pafs.FileSystem, path: str, ids, columns: Sequence[str] | None,
              stats: LookupStats) -> Iterator[pa.Table]:
    """The rows of one Parquet file whose id is in `ids`, one row group at a time (counted in `stats`)."""
    with fs.open_input_file(path) as source:
        parquet = pq.ParquetFile(source)  # reads the footer: the row groups' statistics come with it
        schema = parquet.schema_arrow
        if "id" not in schema.names:
            raise ValueError(f"Parquet file '{path}' has no `id` column (columns: {', '.join(schema.names)}).")
        wanted = value_set(ids, schema.field("id").type, path)
        stats.files += 1
        stats.row_groups += parquet.metadata.num_row_groups
        if len(wanted) == 0:
            return
        for group in candidate_groups(parquet.metadata, sorted(wanted.to_pylist())):
            stats.row_groups_scanned += 1
            mask = pc.is_in(parquet.read_row_group(group, columns=["id"]).column("id"), value_set=wanted)
            hits = pc.sum(mask).as_py() or 0
            if hits:
                stats.row_groups_read += 1
                stats.rows += hits
                yield parquet.read_row_group(group, columns=list(columns) if columns else None).filter(mask)


def rows_by_id(uri: str, ids, columns: Sequence[str] | None = None,
               threads: int = THREADS) -> tuple[pa.Table, LookupStats]:
    """(the rows of the pool at `uri` whose `id` is in `ids`, in file order; what was read). Ids missing from
    the pool are not an error here: the caller knows whether it may miss some."""
    fs, _ = storage.pyarrow_fs(uri)
    files = parquet_files(uri)
    if not files:
        raise FileNotFoundError(f"'{uri}' holds no .parquet file.")
    wanted = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(ids))

    def one(path: str) -> tuple[list[pa.Table], LookupStats]:
        st = LookupStats()
        return list(file_rows(fs, path, wanted, columns, st)), st

    total, tables = LookupStats(), []
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        for found, st in pool.map(one, files):
            tables.extend(found)
            total.add(st)
    if not tables:
        with fs.open_input_file(files[0]) as source:
            schema = pq.ParquetFile(source).schema_arrow
        names = list(columns) if columns else schema.names
        return pa.schema([schema.field(n) for n in names]).empty_table(), total
    return pa.concat_tables(tables, promote_options="default"), total
