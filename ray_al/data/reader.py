"""Pools as Ray Datasets: read Parquet (local or s3://), keep or drop a set of ids, decode images.

Every record keeps its `id`; Ray Data does not keep row order.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al import storage
from ray_al.data.images import decode_batch
from ray_al.data.pool import PoolSpec


def _select_ids(table: pa.Table, ids_ref, keep: bool) -> pa.Table:
    import ray

    ids = _cached(ids_ref, ray.get)
    column = table.column("id")
    if ids.type != column.type:  # an empty id list arrives as float64; int32 vs int64 pools, etc.
        ids = ids.cast(column.type)
    mask = pc.is_in(column, value_set=ids)
    return table.filter(mask if keep else pc.invert(mask))


_CACHE: dict = {}


def _cached(ref, getter):
    """One fetch of the id set per worker process, not one per batch."""
    key = ref.hex()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = getter(ref)
    return _CACHE[key]


def read_split(uri: str, *, columns: list[str] | None = None, include_ids=None, exclude_ids=None):
    """A Ray Dataset over a pool/test Parquet, optionally restricted to (or excluding) some ids."""
    import ray

    fs, path = storage.pyarrow_fs(uri)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    for ids, keep in ((include_ids, True), (exclude_ids, False)):
        if ids is None:
            continue
        ids_ref = ray.put(pa.array(np.asarray(ids)))
        ds = ds.map_batches(_select_ids, fn_kwargs={"ids_ref": ids_ref, "keep": keep}, batch_format="pyarrow",
                            batch_size=None, zero_copy_batch=True)
    return ds


def _decode(batch: dict, image_size: int, channels: int, on_corrupt: str) -> dict:
    return decode_batch(batch, image_size, channels, on_corrupt, read_uri=storage.read_bytes)


def decoded(ds, spec: PoolSpec, on_corrupt: str):
    """Add `pixels` uint8 (H, W, C) and `corrupt` columns; drop the encoded column."""
    return ds.map_batches(
        _decode, fn_kwargs={"image_size": spec.image_size, "channels": spec.channels, "on_corrupt": on_corrupt},
        batch_format="numpy", batch_size=256,
    )


def pool_columns(spec: PoolSpec, with_label: bool = False) -> list[str]:
    cols = ["id", spec.image_column]
    return cols + ["label"] if with_label else cols
