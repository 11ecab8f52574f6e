"""The pool and test split of a run: where they live, their schema, and their checks (no Ray here).

Built-in datasets are written once into RUN_DIR/data/ in the pool contract; user pools (Parquet, local or
s3://) are used in place after their schema and ids are checked. A pool `label` of -1 (ledger.OOD_LABEL)
marks an out-of-distribution image: the simulated oracle answers it "none of these classes". The test
split holds in-class images only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ray_al.core import storage
from ray_al.core.ids import duplicated
from ray_al.core.config import ConfigError, DataConfig, ModelConfig
from ray_al.data import builtin
from ray_al.data.images import decode_one
from ray_al.run.ledger import OOD_LABEL

BUILTIN = ("digits", "cifar10")  # written into the run directory; the others are the user's
DATASETS = (*BUILTIN, "parquet", "folder")
# Normalisation constants of the built-ins; other pools estimate theirs from a sample.
STATS = {"digits": ((0.3,), (0.36,)), "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))}
NATIVE_SHAPE = {"digits": (8, 1), "cifar10": (32, 3)}


class PoolError(ValueError):
    """A pool that breaks the contract (README, "Your own data": unique `id`, `image` bytes or `path` URI, int `label`,
    -1 for an out-of-distribution image)."""


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
    fs, path = storage.pyarrow_fs(uri)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"pool '{uri}' not found. Check data.pool (a Parquet file or directory; for s3:// also the bucket "
            "and data.s3_endpoint). An image folder must be ingested first: python -m ray_al.data ingest SRC DEST."
        ) from exc


def check_pool(uri: str, what: str = "pool", allow_ood: bool = True) -> tuple[pa.Schema, int, str]:
    """Check the contract on `uri`; returns (schema, rows, image column). Reads only the `id` and `label`
    columns. allow_ood: whether a `label` of -1 (out of distribution) may appear."""
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
    if len(ids) == 0:
        raise PoolError(f"{what} '{uri}' has no rows: point it at a Parquet dataset with images (or ingest an "
                        "image folder with python -m ray_al.data ingest).")
    if ids.null_count:
        raise PoolError(f"{what} '{uri}': {ids.null_count} rows have a null `id`; every record needs one.")
    count, shown = duplicated(ids)
    if count:
        raise PoolError(
            f"{what} '{uri}' has {count} duplicate ids (e.g. {shown}). Ids must be unique: de-duplicate the "
            "rows or regenerate the ids."
        )
    if "label" in names:
        _check_labels(ds, uri, what, allow_ood)
    return ds.schema, len(ids), image_column


def _check_labels(ds: pads.Dataset, uri: str, what: str, allow_ood: bool) -> None:
    """Integer labels, none below OOD_LABEL; OOD_LABEL itself only where allow_ood."""
    if not pa.types.is_integer(ds.schema.field("label").type):
        raise PoolError(f"{what} '{uri}': `label` must be an integer class index, got {ds.schema.field('label').type}.")
    table = ds.to_table(columns=["id", "label"])
    lowest = OOD_LABEL if allow_ood else 0
    bad = table.filter(pc.less(table.column("label"), lowest))
    if bad.num_rows:
        shown = ", ".join(f"{i!r}->{y}" for i, y in zip(bad.column("id")[:10].to_pylist(),
                                                         bad.column("label")[:10].to_pylist()))
        allowed = f"class indices from 0, or {OOD_LABEL} for an out-of-distribution image" if allow_ood else \
            "class indices from 0 (accuracy is measured on in-class images: drop the out-of-distribution rows)"
        raise PoolError(f"{what} '{uri}': {bad.num_rows} rows have a negative `label` (id->label: {shown}). "
                        f"Labels are {allowed}.")


def read_labels(uri: str) -> tuple[list, list]:
    """(ids, labels) of a pool with a `label` column; a null label (unknown) comes back as None."""
    table = _dataset(uri).to_table(columns=["id", "label"])
    return table.column("id").to_pylist(), table.column("label").to_pylist()


def labelled_ids(uri: str) -> pa.ChunkedArray:
    """The ids of the pool rows whose label is known (not null), sorted, as Arrow: string ids stay packed in
    one buffer (a numpy array of them holds a Python object per id: 81 MB against 37 at a million paths)."""
    column = _dataset(uri).to_table(columns=["id"], filter=pc.field("label").is_valid()).column("id")
    return column.take(pc.sort_indices(column))


def fingerprint(pool: PoolSpec) -> str:
    """A digest of what a frozen encoder's stored features depend on besides the encoder: the input geometry
    and normalisation, the classes, and the pool's and test split's ids (and image URIs, for a pool of paths),
    read a row group at a time. Images replaced under the same ids and URIs are not seen: clear the
    features cache after such an edit."""
    import hashlib

    spec = {k: v for k, v in pool.to_dict().items() if k not in ("pool_uri", "test_uri")}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode())
    columns = ["id", "path"] if pool.image_column == "path" else ["id"]
    for uri in (pool.pool_uri, pool.test_uri):
        for batch in _dataset(uri).to_batches(columns=columns) if uri else ():
            for column in batch.columns:
                values = column.to_numpy(zero_copy_only=False)
                digest.update(values.tobytes() if values.dtype.kind in "iu" else "".join(f"{v}\n" for v in values).encode())
        digest.update(b"|")
    return digest.hexdigest()


def _estimate_stats(uri: str, image_column: str, image_size: int, channels: int) -> tuple[tuple, tuple]:
    table = _dataset(uri).head(256, columns=[image_column])
    arrays = []
    for value in table.column(image_column).to_pylist():
        data = value if image_column == "image" else storage.read_bytes(value)
        try:
            arrays.append(decode_one(data, image_size, channels))
        except Exception:  # corrupt samples are reported later, by id, when decoded for real
            continue
    if not arrays:
        return (0.5,) * channels, (0.25,) * channels
    x = np.stack(arrays).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(axis=(0, 1, 2))), tuple(float(v) + 1e-3 for v in x.std(axis=(0, 1, 2)))


MAX_DEFAULT_SIZE = 224  # the inferred input side never exceeds this: 4000-px photos are not 4000-px inputs


def _infer_shape(uri: str, image_column: str, sample: int = 32) -> tuple[int, int]:
    """(median shorter side of the first `sample` images, at most MAX_DEFAULT_SIZE; their channels: 1 when
    all are grey, else 3)."""
    from PIL import Image
    import io

    sides, grey = [], True
    for value in _dataset(uri).head(sample, columns=[image_column]).column(image_column).to_pylist():
        try:
            with Image.open(io.BytesIO(value if image_column == "image" else storage.read_bytes(value))) as img:
                sides.append(min(img.size))
                grey = grey and img.mode in ("L", "1", "I", "F", "I;16")
        except Exception:  # corrupt images are reported later, by id, when decoded for real
            continue
    if not sides:
        raise PoolError(f"pool '{uri}': none of its first {sample} images decodes; set data.image_size and "
                        "data.channels, or fix the images.")
    return min(int(np.median(sides)), MAX_DEFAULT_SIZE), 1 if grey else 3


def weights_input(model: ModelConfig | None):
    """The input that model.weights expect (ray_al.models.pretrained.Preprocess), or None (random init)."""
    if model is None:
        return None
    from ray_al.models.pretrained import resolve_preprocess

    try:
        return resolve_preprocess(model.backbone, model.weights)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _input_geometry(cfg: DataConfig, model: ModelConfig | None, native: tuple, stats: tuple | None,
                    pool_uri: str, image_column: str) -> tuple[int, int, tuple, tuple]:
    """(image_size, channels, mean, std): data.* when set, else the weights' metadata, else the dataset's
    own, else inferred from the pool (size and channels from its first images, statistics from a sample)."""
    pre = weights_input(model)
    size, channels = (pre.image_size, pre.channels) if pre else native
    mean, std = (pre.mean, pre.std) if pre else (stats if stats else (None, None))
    image_size, channels = cfg.image_size or size, cfg.channels or channels
    if not image_size or not channels:
        inferred_size, inferred_channels = _infer_shape(pool_uri, image_column)
        image_size, channels = image_size or inferred_size, channels or inferred_channels
    if cfg.mean or cfg.std:
        if len(cfg.mean) not in (1, channels) or len(cfg.std) not in (1, channels):
            raise ConfigError(f"data.mean={list(cfg.mean)} and data.std={list(cfg.std)} need one value per channel "
                              f"({channels}) or a single value each.")
        mean, std = cfg.mean, cfg.std
    if mean is None or len(mean) != channels:  # no statistics, or those of another channel count
        mean, std = _estimate_stats(pool_uri, image_column, image_size, channels)
    return image_size, channels, tuple(mean), tuple(std)


def prepare(cfg: DataConfig, run_dir: str, seed: int, model: ModelConfig | None = None) -> PoolSpec:
    """Materialise built-in datasets into RUN_DIR/data and check the pool; the spec is saved in run.json.
    model: the input size and normalisation follow model.weights (`_input_geometry`)."""
    if cfg.embeddings:  # the user's own features: the pool is that file, no images are read
        return embeddings_pool(cfg)
    if cfg.dataset not in DATASETS:
        raise PoolError(f"data.dataset='{cfg.dataset}' is not known; valid: {', '.join(DATASETS)}.")
    if cfg.dataset in BUILTIN:
        pool_uri, test_uri, names = _write_builtin(cfg, run_dir, seed)
        native, stats = NATIVE_SHAPE[cfg.dataset], STATS[cfg.dataset]
    else:
        pool_uri, test_uri = _user_splits(cfg, run_dir)
        native, stats, names = (0, 0), None, None
    schema, rows, image_column = _check_splits(pool_uri, test_uri)
    image_size, channels, mean, std = _input_geometry(cfg, model, native, stats, pool_uri, image_column)
    num_classes, names = _classes(cfg, pool_uri, test_uri, names)
    return PoolSpec(
        pool_uri=pool_uri, test_uri=test_uri, num_classes=num_classes, class_names=names,
        image_size=image_size, channels=channels, mean=tuple(mean), std=tuple(std), image_column=image_column,
        id_type="int64" if pa.types.is_integer(schema.field("id").type) else "string", pool_rows=rows,
        has_labels="label" in schema.names,
    )


def _write_builtin(cfg: DataConfig, run_dir: str, seed: int) -> tuple[str, str, list]:
    """A built-in dataset, subsampled, written into RUN_DIR/data in the pool contract: (pool, test, names)."""
    if cfg.dataset == "digits":
        pool, test, names = builtin.digits(seed=seed)
    else:
        pool, test, names = builtin.cifar10(cfg.pool, cfg.test)
    pool = builtin.subsample(pool, cfg.pool_size, seed)
    test = builtin.subsample(test, cfg.test_size, seed + 1)
    pool_uri, test_uri = storage.join(run_dir, "data", "pool.parquet"), storage.join(run_dir, "data", "test.parquet")
    storage.write_parquet_atomic(pool_uri, pool)
    storage.write_parquet_atomic(test_uri, test)
    return pool_uri, test_uri, names


def _user_splits(cfg: DataConfig, run_dir: str) -> tuple[str, str]:
    """(pool, test) URIs of a user dataset: Parquet is used in place, image folders are ingested once."""
    if not cfg.pool:
        raise PoolError(f"data.dataset={cfg.dataset} needs data.pool (a Parquet file/dir, local or s3://).")
    folder = cfg.dataset == "folder"
    pool_uri = _ingested(cfg.pool, storage.join(run_dir, "data", "pool"), cfg.classes) if folder else cfg.pool
    if not cfg.test:  # optional: rounds then report no accuracy
        return pool_uri, ""
    test_uri = _ingested(cfg.test, storage.join(run_dir, "data", "test")) if folder else cfg.test
    return pool_uri, test_uri


def _ingested(src: str, dest: str, classes: tuple[str, ...] = ()) -> str:
    """An image folder ingested into dest (once: a finished ingest leaves _classes.json); `classes` names the
    classes of an unlabeled folder."""
    from ray_al.data.ingest import ingest

    if not storage.exists(storage.join(dest, "_classes.json")):
        ingest(src, dest, overwrite=True, classes=classes)
    return dest


def _check_splits(pool_uri: str, test_uri: str) -> tuple[pa.Schema, int, str]:
    """The pool and test contracts; returns the pool's (schema, rows, image column)."""
    schema, rows, image_column = check_pool(pool_uri, "pool")
    if test_uri:
        test_schema, _test_rows, _ = check_pool(test_uri, "test split", allow_ood=False)
        if "label" not in test_schema.names:
            raise PoolError(f"test split '{test_uri}' has no `label` column; accuracy needs labels.")
    id_type = schema.field("id").type
    if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise PoolError(f"pool `id` must be int64 or string, got {id_type}.")
    return schema, rows, image_column


def _classes(cfg: DataConfig, pool_uri: str, test_uri: str, names) -> tuple[int, tuple[str, ...]]:
    """(num_classes, class names): data.classes, else the ingested class list, else data.num_classes, else
    the largest label of the test split or the pool."""
    if cfg.classes:
        names = list(cfg.classes)
    if names is None:
        from ray_al.data.ingest import read_classes

        names = read_classes(pool_uri)
    num_classes = cfg.num_classes or (len(names) if names else 0)
    if not num_classes:
        num_classes = _largest_label(test_uri or pool_uri) + 1
    if names and len(names) != num_classes:
        raise PoolError(f"data.num_classes={num_classes} but {len(names)} class names ({', '.join(names[:10])}): "
                        "drop data.num_classes or fix data.classes.")
    return num_classes, tuple(names) if names else tuple(str(i) for i in range(num_classes))


def _largest_label(uri: str) -> int:
    """The largest known label of a split; refuses a split with none (an unlabeled pool and no test split)."""
    known = [y for y in read_labels(uri)[1] if y is not None] if "label" in _dataset(uri).schema.names else []
    if not known:
        raise PoolError(f"'{uri}' has no labels to count the classes from: name them with data.classes=[a,b,...] "
                        "(the classes your annotators will use).")
    return int(max(known))


def embeddings_pool(cfg: DataConfig) -> PoolSpec:
    """The PoolSpec of a selection-only run: the pool is the embeddings file itself (its `label` column is
    what the simulated oracle answers, its `path` what annotators are shown). Classes: data.classes, else
    the width of `probs`, else the labels."""
    from ray_al.data.user_embeddings import EmbeddingsError, check_user_embeddings, label_classes

    user = check_user_embeddings(cfg.embeddings)
    count = len(cfg.classes) or cfg.num_classes or user.num_classes or (label_classes(user.uri) if user.has_labels else 0)
    if not count:
        raise EmbeddingsError(f"data.embeddings '{user.uri}' has neither `probs` nor `label` to count the classes "
                              "from: name them with data.classes=[a,b,...].")
    if user.num_classes and count != user.num_classes:
        raise EmbeddingsError(f"data.embeddings '{user.uri}': `probs` has {user.num_classes} classes but "
                              f"data.classes/num_classes say {count}.")
    names = tuple(cfg.classes) or tuple(str(i) for i in range(count))
    return PoolSpec(pool_uri=user.uri, test_uri="", num_classes=count, class_names=names, image_size=0, channels=0,
                    mean=(), std=(), image_column="path" if user.has_paths else "", id_type=user.id_type,
                    pool_rows=user.rows, has_labels=user.has_labels)
