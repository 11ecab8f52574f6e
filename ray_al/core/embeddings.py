"""A round's embeddings on disk (README, "What a run prints and writes"), read and written in one place. Pure pyarrow.

RUN_DIR/rounds/NNNN/embeddings/split=<unlabeled|labeled|test>/*.parquet, columns `id`, `embedding`
(fixed-size list of float32), `probs` (fixed-size list of float32), `corrupt` (bool: the image could not
be decoded), `committee` (members x classes, flattened; only when a committee method needs it) and, in the
test split, `label`. ray_al.workers.embed writes them; ray_al.loop.selection and the evaluation read them.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ray_al.core import storage

BATCH_ROWS = 8192  # rows a streaming read holds at once
FILE_ROWS = 131_072  # rows per file of a split written here: 8 files at 1,000,000 rows, for k-center's shards


def fixed_list(matrix: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1] if matrix.ndim == 2 else 1)


def read_embeddings(out_uri: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """One split of a round's embeddings as a table (empty table if the split had no rows)."""
    uri = storage.join(out_uri, f"split={split}")
    if not storage.exists(uri):
        return pa.table({"id": pa.array([], pa.int64())})
    return storage.read_parquet(uri, columns=columns)


def split_rows(out_uri: str, split: str) -> int:
    """The split's row count, undecodable rows included, from the files' footers (0 without the split)."""
    dataset = split_dataset(out_uri, split)
    return 0 if dataset is None else dataset.count_rows()


def split_files(out_uri: str, split: str) -> list[str]:
    uri = storage.join(out_uri, f"split={split}")
    if not storage.exists(uri):
        return []
    return sorted(storage.join(uri, name) for name in storage.listdir(uri) if name.endswith(".parquet"))


def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column -> (n, width) float32: one chunk as a view of its Arrow buffer where the
    values are float32 already, several chunks copied once, chunk by chunk, into one array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    if len(chunks) == 1:
        return _rows(chunks[0])
    out = np.empty((sum(len(c) for c in chunks), _width(chunks[0])), dtype=np.float32)
    start = 0
    for chunk in chunks:
        out[start:start + len(chunk)] = _rows(chunk)
        start += len(chunk)
    return out


def _width(arr: pa.Array) -> int:
    return arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else len(arr[0])


def _rows(arr: pa.Array) -> np.ndarray:
    """One non-empty list array -> (n, width) float32, zero-copy where Arrow allows."""
    return np.asarray(arr.flatten(), dtype=np.float32).reshape(len(arr), _width(arr))


def drop_corrupt(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """The rows whose image decoded: an undecodable image was embedded as zero pixels, so its features say
    nothing and it must never be selected or used as a labeled example. The one place this filter lives;
    `table` itself (no copy) when every row decoded."""
    import pyarrow.compute as pc

    if not table.num_rows or "corrupt" not in table.schema.names:
        return table
    corrupt = table.column("corrupt")
    if not corrupt.null_count and not pc.any(corrupt).as_py():
        return table
    return table.filter(decodable(table))


def decodable(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """One bool per row: the image decoded (`corrupt` false; a null `corrupt` counts as undecodable)."""
    import pyarrow.compute as pc

    if "corrupt" not in table.schema.names:
        return np.ones(table.num_rows, bool)
    return pc.fill_null(pc.invert(table.column("corrupt")), False).to_numpy(zero_copy_only=False)


def split_dataset(out_uri: str, split: str) -> ds.Dataset | None:
    """The split's files as pq.read_table (read_embeddings) finds them, in the same order; None if absent."""
    uri = storage.join(out_uri, f"split={split}")
    if not storage.exists(uri):
        return None
    fs, path = storage.pyarrow_fs(uri)
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")


def split_columns(out_uri: str, split: str) -> list[str]:
    dataset = split_dataset(out_uri, split)
    return dataset.schema.names if dataset is not None else ["id"]


def list_width(out_uri: str, split: str, column: str) -> int:
    """The width of a fixed-size-list column of the split (0 when the split has no files or no such column:
    a user's embeddings may come without `probs`)."""
    dataset = split_dataset(out_uri, split)
    if dataset is None or column not in dataset.schema.names:
        return 0
    return dataset.schema.field(column).type.list_size


def batches(dataset: ds.Dataset | None, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A split's rows (`_dataset`) in read_embeddings' order, `columns` only, one record batch at a time:
    a file's row group in memory, never the split."""
    for fragment in dataset.get_fragments() if dataset is not None else ():
        yield from row_group_batches(fragment.path, dataset.filesystem, columns)


def row_group_batches(path: str, filesystem, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """One Parquet file's `columns`, a row group at a time, in batches of at most BATCH_ROWS rows. Not
    ParquetFile.iter_batches: on pyarrow 26 it kept every row group it had read (a 1,000,000 x 128 float32
    split: Arrow's peak 583 MiB against 18 MiB row group by row group, 2026-12-06)."""
    with pq.ParquetFile(path, filesystem=filesystem, buffer_size=1 << 20) as file:
        for group in range(file.num_row_groups):
            yield from file.read_row_group(group, columns=columns, use_threads=False).to_batches(BATCH_ROWS)


def read_decodable(out_uri: str, split: str, columns: list[str]) -> tuple[pa.ChunkedArray, dict[str, np.ndarray]]:
    """The split's decodable rows (drop_corrupt) as their ids and one (n, width) float32 matrix per
    fixed-size-list column of `columns`, same rows and order as matrix(drop_corrupt(read_embeddings(...))):
    each matrix is allocated once and filled batch by batch, so the peak is the result plus one batch.
    The split's files are listed once (on S3 a listing is a LIST request)."""
    dataset = split_dataset(out_uri, split)
    if dataset is None:
        return pa.chunked_array([], pa.int64()), {c: np.zeros((0, 0), dtype=np.float32) for c in columns}
    marks = [c for c in ("id", "corrupt") if c in dataset.schema.names]
    ids = pa.chunked_array([drop_corrupt(b).column("id") for b in batches(dataset, marks)],
                           dataset.schema.field("id").type)
    if not len(ids):
        return ids, {c: np.zeros((0, 0), dtype=np.float32) for c in columns}
    out = {c: np.empty((len(ids), dataset.schema.field(c).type.list_size), dtype=np.float32) for c in columns}
    start = 0
    for batch in batches(dataset, columns + marks[1:]):
        batch = drop_corrupt(batch)
        for c in columns if batch.num_rows else ():
            out[c][start:start + batch.num_rows] = matrix(batch.column(c))
        start += batch.num_rows
    return ids, out


def gather(out_uri: str, split: str, column: str, at: np.ndarray) -> np.ndarray:
    """(len(at), width) float32 whose row i is row at[i] of the split's `column` (corrupt rows counted):
    filled batch by batch, never the whole split in memory."""
    if not len(at):
        return np.zeros((0, 0), dtype=np.float32)
    order = np.argsort(at, kind="stable")
    wanted = np.asarray(at)[order]
    dataset = split_dataset(out_uri, split)
    out = np.empty((len(at), dataset.schema.field(column).type.list_size), dtype=np.float32)
    start = 0
    for batch in batches(dataset, [column]):
        lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
        if hi > lo:
            out[order[lo:hi]] = matrix(batch.column(column))[wanted[lo:hi] - start]
        start += batch.num_rows
    return out


class SplitFiles:
    """One split's Parquet files under a round's embeddings folder, part-00000.parquet, part-00001.parquet, ...,
    FILE_ROWS rows each, written a batch at a time (close() when done)."""

    def __init__(self, fs, root: str, split: str):
        self.fs, self.folder = fs, f"{root.rstrip('/')}/split={split}"
        self.rows, self.writer, self.in_file, self.files = 0, None, 0, 0

    def write(self, part: pa.RecordBatch) -> None:
        while part.num_rows:
            if self.writer is None:
                self.fs.create_dir(self.folder, recursive=True)
                self.writer = pq.ParquetWriter(f"{self.folder}/part-{self.files:05d}.parquet", part.schema,
                                               filesystem=self.fs)
            room = FILE_ROWS - self.in_file
            self.writer.write_batch(part.slice(0, room))
            taken = min(room, part.num_rows)
            self.rows, self.in_file, part = self.rows + taken, self.in_file + taken, part.slice(taken)
            if self.in_file == FILE_ROWS:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_file, self.files = None, 0, self.files + 1


def write_by_ids(files: dict[str, SplitFiles], rows: pa.RecordBatch, labeled: pa.Array) -> None:
    """`rows` into files["labeled"] where their id is in `labeled`, the others into files["unlabeled"]."""
    import pyarrow.compute as pc

    inside = pc.is_in(rows.column("id"), value_set=labeled)
    files["labeled"].write(rows.filter(inside))
    files["unlabeled"].write(rows.filter(pc.invert(inside)))
