"""A round's embeddings on disk (the DESIGN.md contract), read and written in one place. Pure pyarrow.

RUN_DIR/rounds/NNNN/embeddings/split=<unlabeled|labeled|test>/*.parquet, columns `id`, `embedding`
(fixed-size list of float32), `probs` (fixed-size list of float32), `corrupt` (bool: the image could not
be decoded), `committee` (members x classes, flattened; only when a committee method needs it) and, in the
test split, `label`. ray_al.embed writes them; ray_al.selection and the evaluation read them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_al import storage

SPLITS = ("unlabeled", "labeled", "test")


def fixed_list(matrix: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1] if matrix.ndim == 2 else 1)


def read_embeddings(out_uri: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """One split of a round's embeddings as a table (empty table if the split had no rows)."""
    uri = storage.join(out_uri, f"split={split}")
    if not storage.exists(uri):
        return pa.table({"id": pa.array([], pa.int64())})
    return storage.read_parquet(uri, columns=columns)


def split_files(out_uri: str, split: str) -> list[str]:
    uri = storage.join(out_uri, f"split={split}")
    if not storage.exists(uri):
        return []
    return sorted(storage.join(uri, name) for name in storage.listdir(uri) if name.endswith(".parquet"))


def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column -> (n, width) float32."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    width = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else len(arr[0])
    return np.asarray(arr.flatten(), dtype=np.float32).reshape(len(arr), width)


def drop_corrupt(table: pa.Table) -> pa.Table:
    """The rows whose image decoded: an undecodable image was embedded as zero pixels, so its features say
    nothing and it must never be selected or used as a labeled example. The one place this filter lives."""
    import pyarrow.compute as pc

    if table.num_rows and "corrupt" in table.column_names:
        return table.filter(pc.invert(table.column("corrupt")))
    return table
