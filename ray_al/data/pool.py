"""The pool and test split of a run: where they live, their schema, and their checks (no Ray here).

Built-in datasets are written once into RUN_DIR/data/ in the pool contract; user pools (Parquet, local or
s3://) are used in place after their schema and ids are checked.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ray_al import io
from ray_al.config import DataConfig
from ray_al.data import builtin
from ray_al.data.images import decode_one

DATASETS = ("digits", "cifar10", "parquet", "folder")
# Normalisation constants of the built-ins; other pools estimate theirs from a sample.
STATS = {"digits": ((0.3,), (0.36,)), "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))}
NATIVE_SHAPE = {"digits": (8, 1), "cifar10": (32, 3)}


class PoolError(ValueError):
    """A pool that breaks the contract (DESIGN.md: unique `id`, `image` bytes or `path` URI, int `label`)."""


@dataclass(frozen=True)
class PoolSpec:
    pool_uri: str
    test_uri: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_column: str  # "image" (bytes) or "path" (URIs)
    id_type: str  # "int64" or "string"
    pool_rows: int
    has_labels: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PoolSpec":
        return cls(**{**d, "class_names": tuple(d["class_names"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def _dataset(uri: str) -> pads.Dataset:
    fs, path = io.pyarrow_fs(uri)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"pool '{uri}' not found. Check data.pool (a Parquet file or directory; for s3:// also the bucket "
            "and data.s3_endpoint). An image folder must be ingested first: python -m ray_al.data ingest SRC DEST."
        ) from exc


def check_pool(uri: str, what: str = "pool") -> tuple[pa.Schema, int, str]:
    """Check the contract on `uri`; returns (schema, rows, image column). Reads only the `id` column."""
    ds = _dataset(uri)
    names = ds.schema.names
    if "id" not in names:
        raise PoolError(
            f"{what} '{uri}' has no `id` column (columns: {', '.join(names)}). Every record needs a unique id: "
            "add one (e.g. the row number or the file path), or ingest an image folder with python -m ray_al.data."
        )
    image_column = "image" if "image" in names else "path" if "path" in names else None
    if image_column is None:
        raise PoolError(f"{what} '{uri}' has neither `image` (encoded bytes) nor `path` (image URIs) columns.")
    ids = ds.to_table(columns=["id"]).column("id")
    if ids.null_count:
        raise PoolError(f"{what} '{uri}': {ids.null_count} rows have a null `id`; every record needs one.")
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        shown = ", ".join(repr(v.as_py()) for v in dup.field("values")[:10])
        raise PoolError(
            f"{what} '{uri}' has {len(dup)} duplicate ids (e.g. {shown}). Ids must be unique: de-duplicate the "
            "rows or regenerate the ids."
        )
    if "label" in names and not pa.types.is_integer(ds.schema.field("label").type):
        raise PoolError(f"{what} '{uri}': `label` must be an integer class index, got {ds.schema.field('label').type}.")
    return ds.schema, len(ids), image_column


def read_labels(uri: str) -> tuple[list, list]:
    """(ids, labels) of a pool with a `label` column; a null label (unknown) comes back as None."""
    table = _dataset(uri).to_table(columns=["id", "label"])
    return table.column("id").to_pylist(), table.column("label").to_pylist()


def read_ids(uri: str) -> np.ndarray:
    return _dataset(uri).to_table(columns=["id"]).column("id").to_numpy(zero_copy_only=False)


def _estimate_stats(uri: str, image_column: str, image_size: int, channels: int) -> tuple[tuple, tuple]:
    table = _dataset(uri).head(256, columns=[image_column])
    arrays = []
    for value in table.column(image_column).to_pylist():
        data = value if image_column == "image" else io.read_bytes(value)
        try:
            arrays.append(decode_one(data, image_size, channels))
        except Exception:  # corrupt samples are reported later, by id, when decoded for real
            continue
    if not arrays:
        return (0.5,) * channels, (0.25,) * channels
    x = np.stack(arrays).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(axis=(0, 1, 2))), tuple(float(v) + 1e-3 for v in x.std(axis=(0, 1, 2)))


def _infer_shape(uri: str, image_column: str) -> tuple[int, int]:
    from PIL import Image
    import io as _pyio

    first = _dataset(uri).head(1, columns=[image_column]).column(image_column)[0].as_py()
    data = first if image_column == "image" else io.read_bytes(first)
    with Image.open(_pyio.BytesIO(data)) as img:
        return max(img.size), (1 if img.mode in ("L", "1", "I", "F") else 3)


def prepare(cfg: DataConfig, run_dir: str, seed: int) -> PoolSpec:
    """Materialise built-in datasets into RUN_DIR/data and check the pool; the spec is saved in run.json."""
    if cfg.dataset not in DATASETS:
        raise PoolError(f"data.dataset='{cfg.dataset}' is not known; valid: {', '.join(DATASETS)}.")
    if cfg.dataset in ("digits", "cifar10"):
        if cfg.dataset == "digits":
            pool, test, names = builtin.digits(seed=seed)
        else:
            pool, test, names = builtin.cifar10(cfg.pool, cfg.test)
        pool = builtin.subsample(pool, cfg.pool_size, seed)
        test = builtin.subsample(test, cfg.test_size, seed + 1)
        pool_uri, test_uri = io.join(run_dir, "data", "pool.parquet"), io.join(run_dir, "data", "test.parquet")
        io.write_parquet_atomic(pool_uri, pool)
        io.write_parquet_atomic(test_uri, test)
        size, channels = NATIVE_SHAPE[cfg.dataset]
        mean, std = STATS[cfg.dataset]
    else:
        if not cfg.pool:
            raise PoolError(f"data.dataset={cfg.dataset} needs data.pool (a Parquet file/dir, local or s3://).")
        pool_uri = cfg.pool
        if cfg.dataset == "folder":  # ingest once into the run directory
            from ray_al.data.ingest import ingest

            pool_uri = io.join(run_dir, "data", "pool")
            if not io.exists(io.join(pool_uri, "_classes.json")):
                ingest(cfg.pool, pool_uri, overwrite=True)
        if not cfg.test:
            raise PoolError("data.test is empty: give a labeled test split (same contract as the pool).")
        test_uri = cfg.test
        if cfg.dataset == "folder":
            from ray_al.data.ingest import ingest

            test_src, test_uri = cfg.test, io.join(run_dir, "data", "test")
            if not io.exists(io.join(test_uri, "_classes.json")):
                ingest(test_src, test_uri, overwrite=True)
        size, channels, mean, std, names = 0, 0, None, None, None
    schema, rows, image_column = check_pool(pool_uri, "pool")
    test_schema, _test_rows, _ = check_pool(test_uri, "test split")
    if "label" not in test_schema.names:
        raise PoolError(f"test split '{test_uri}' has no `label` column; accuracy needs labels.")
    if not (pa.types.is_integer(schema.field("id").type) or pa.types.is_string(schema.field("id").type)
            or pa.types.is_large_string(schema.field("id").type)):
        raise PoolError(f"pool `id` must be int64 or string, got {schema.field('id').type}.")
    image_size = cfg.image_size or size
    channels = cfg.channels or channels
    if not image_size or not channels:
        inferred_size, inferred_channels = _infer_shape(pool_uri, image_column)
        image_size, channels = image_size or inferred_size, channels or inferred_channels
    if mean is None:
        mean, std = _estimate_stats(pool_uri, image_column, image_size, channels)
    has_labels = "label" in schema.names
    if names is None:
        from ray_al.data.ingest import read_classes

        names = read_classes(pool_uri)
    num_classes = cfg.num_classes or (len(names) if names else 0)
    if not num_classes:
        _, test_labels = read_labels(test_uri)
        num_classes = int(max(y for y in test_labels if y is not None)) + 1
    names = list(names) if names else [str(i) for i in range(num_classes)]
    return PoolSpec(
        pool_uri=pool_uri, test_uri=test_uri, num_classes=num_classes, class_names=tuple(names),
        image_size=image_size, channels=channels, mean=tuple(mean), std=tuple(std), image_column=image_column,
        id_type="int64" if pa.types.is_integer(schema.field("id").type) else "string", pool_rows=rows,
        has_labels=has_labels,
    )
