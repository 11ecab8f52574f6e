"""Pools as Ray Datasets: read Parquet (local or s3://), keep or drop a set of ids, decode images.

Every record keeps its `id`; Ray Data does not keep row order.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al.core import storage
from ray_al.data import lookup
from ray_al.data.images import decode_batch
from ray_al.data.pool import PoolSpec
from ray_al.core.ids import seeded_sample


def _drop_ids(table: pa.Table, ids_ref) -> pa.Table:
    """The rows whose id is not in the id set behind ids_ref (the wanted ones: `read_ids`)."""
    return table.filter(pc.invert(_member(table, ids_ref)))


def _member(table: pa.Table, ids_ref):
    """Whether each row's id is in the id set behind ids_ref."""
    import ray

    ids = _cached(ids_ref, ray.get)
    column = table.column("id")
    if ids.type != column.type:  # an empty id list arrives as float64; int32 vs int64 pools, etc.
        ids = ids.cast(column.type)
    return pc.is_in(column, value_set=ids)


FROZEN_POOL = "pool"  # frozen_input's split of the whole pool
_CACHE: dict = {}
# Ray 2.60's default Parquet reader (DataSourceV2) lists files in a task of its own before any read task
# may start: on a 2-CPU node a 600-row read took 5-8 s, against 0.3-2.7 s with the V1 reader, which plans
# in the driver. V1 may hold a whole file in a read task, V2 reads in bounded units (test_embed's 10x
# memory test fails with V1). So V1 only for data this small: its memory stays bounded by this constant.
_SMALL_PARQUET_BYTES = 64 << 20


def _cached(ref, getter):
    """One fetch of the id set per worker process, not one per batch."""
    key = ref.hex()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = getter(ref)
    return _CACHE[key]


def _sampled(table: pa.Table, seed: int, fraction: float) -> pa.Table:
    return table.filter(pa.array(seeded_sample(table.column("id").to_numpy(zero_copy_only=False), seed, fraction)))


def read_split(uri: str, *, columns: list[str] | None = None, include_ids=None, exclude_ids=None,
               sample: tuple[int, float] | None = None):
    """A Ray Dataset over a pool/test Parquet, optionally restricted to (or excluding) some ids, and to a
    seeded sample (seed, fraction) by id (`ids.seeded_sample`), taken as the rows stream by. With
    include_ids only the row groups that hold those ids are read (`read_ids`)."""
    import ray

    from ray_al.workers.ray_utils import ensure_ray

    ensure_ray()
    if include_ids is not None:
        ds = read_ids(uri, include_ids, columns)[0]
    else:
        # The flag is read when the Dataset is created (see _SMALL_PARQUET_BYTES).
        ray.data.DataContext.get_current().use_datasource_v2 = storage.total_bytes(uri) > _SMALL_PARQUET_BYTES
        fs, path = storage.pyarrow_fs(uri)
        ds = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    if exclude_ids is not None:
        ids_ref = ray.put(pa.array(np.asarray(exclude_ids)))
        ds = ds.map_batches(_drop_ids, fn_kwargs={"ids_ref": ids_ref}, batch_format="pyarrow",
                            batch_size=None, zero_copy_batch=True)
    if sample is not None and sample[1] < 1.0:
        ds = ds.map_batches(_sampled, fn_kwargs={"seed": sample[0], "fraction": sample[1]}, batch_format="pyarrow",
                            batch_size=None, zero_copy_batch=True)
    return ds


# Up to this many ids the rows are looked up in the driver (a labeled set: hundreds to a few thousand rows
# of the pool, ~1 GiB at worst for 100 KiB images); more are looked up in Ray tasks, file by file.
DRIVER_LOOKUP_MAX_IDS = 4096
_BLOCK_ROWS = 1024  # rows per block of a driver lookup's Dataset: decoding runs in parallel tasks


def read_ids(uri: str, ids, columns: list[str] | None = None) -> tuple["ray.data.Dataset", dict]:
    """(a Ray Dataset of the rows of `uri` whose id is in `ids`; what the lookup read: `lookup.LookupStats`
    fields, `seconds`, and `where` = driver | tasks). Only the row groups whose id statistics admit a wanted
    id are scanned, and only those holding one are read whole (`ray_al.data.lookup`)."""
    import time

    import ray

    from ray_al.workers.ray_utils import ensure_ray

    ensure_ray()
    started = time.perf_counter()
    if len(ids) <= DRIVER_LOOKUP_MAX_IDS:
        table, stats = lookup.rows_by_id(uri, ids, columns)
        blocks = [table.slice(i, _BLOCK_ROWS) for i in range(0, table.num_rows, _BLOCK_ROWS)] or [table]
        info = {**stats.to_dict(), "where": "driver"}
        ds = ray.data.from_arrow(blocks)
    else:  # the read happens when the Dataset executes: `seconds` is the planning only
        fs, _ = storage.pyarrow_fs(uri)
        files = lookup.parquet_files(uri)
        ids_ref = ray.put(pa.array(np.asarray(ids)))
        ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
            _lookup_files, fn_kwargs={"fs": fs, "ids_ref": ids_ref, "columns": columns}, batch_format="pyarrow",
            batch_size=1)
        info = {"files": len(files), "where": "tasks"}
    return ds, {**info, "seconds": round(time.perf_counter() - started, 3)}


def _lookup_files(batch: pa.Table, fs, ids_ref, columns):
    """Ray Data task: the wanted rows of the files named in `batch`, one row group at a time."""
    import ray

    ids = _cached(ids_ref, ray.get)
    for path in batch.column("path").to_pylist():
        yield from lookup.file_rows(fs, path, ids, columns, lookup.LookupStats())


def _tag(table: pa.Table, split: str) -> pa.Table:
    return table.append_column("split", pa.array([split] * table.num_rows, pa.string()))


def _tag_by_ids(table: pa.Table, ids_ref, inside: str, outside: str) -> pa.Table:
    return table.append_column("split", pc.if_else(_member(table, ids_ref), inside, outside))


def tag_split(ds, name: str):
    """Add a constant `split` column (the embedding output is partitioned by it)."""
    return ds.map_batches(_tag, fn_kwargs={"split": name}, batch_format="pyarrow", zero_copy_batch=True)


def embedding_input(pool: PoolSpec, labeled_ids) -> "ray.data.Dataset":
    """The pool, read once with `split` = labeled | unlabeled by id, then the test set (`split` = test)."""
    rows = _tag_labeled(read_split(pool.pool_uri, columns=pool_columns(pool)), labeled_ids)
    return rows.union(_test_split(pool)) if pool.test_uri else rows


def frozen_input(pool: PoolSpec) -> "ray.data.Dataset":
    """The pool (`split` = pool) and the test set (`split` = test): what a frozen encoder embeds once."""
    rows = tag_split(read_split(pool.pool_uri, columns=pool_columns(pool)), FROZEN_POOL)
    return rows.union(_test_split(pool)) if pool.test_uri else rows


def _test_split(pool: PoolSpec):
    return tag_split(read_split(pool.test_uri, columns=pool_columns(pool, with_label=True)), "test")


def features_input(features_uri: str, labeled_ids) -> "ray.data.Dataset":
    """frozen_input's stored features (embed.FeatureModel.feature_table), tagged like embedding_input."""
    columns = ["id", "features", "corrupt"]
    pool = _tag_labeled(read_split(storage.join(features_uri, f"split={FROZEN_POOL}"), columns=columns), labeled_ids)
    test_uri = storage.join(features_uri, "split=test")
    if not storage.exists(test_uri):  # a run without a test split
        return pool
    return pool.union(tag_split(read_split(test_uri, columns=[*columns, "label"]), "test"))


def _tag_labeled(ds, labeled_ids):
    """Add `split` = labeled | unlabeled by id."""
    import ray

    ids_ref = ray.put(pa.array(np.asarray(labeled_ids)))
    return ds.map_batches(_tag_by_ids, fn_kwargs={"ids_ref": ids_ref, "inside": "labeled", "outside": "unlabeled"},
                          batch_format="pyarrow", batch_size=None, zero_copy_batch=True)


def _decode(batch: dict, image_size: int, channels: int, on_corrupt: str) -> dict:
    return decode_batch(batch, image_size, channels, on_corrupt, read_uri=storage.read_bytes)


def decoded(ds, pool: PoolSpec, on_corrupt: str):
    """Add `pixels` uint8 (H, W, C) and `corrupt` columns; drop the encoded column."""
    return ds.map_batches(
        _decode, fn_kwargs={"image_size": pool.image_size, "channels": pool.channels, "on_corrupt": on_corrupt},
        batch_format="numpy", batch_size=256,
    )


def pool_columns(pool: PoolSpec, with_label: bool = False) -> list[str]:
    cols = ["id", pool.image_column]
    return cols + ["label"] if with_label else cols
