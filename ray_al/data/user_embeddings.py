"""A user's own embeddings (`data.embeddings`): selection without training, on features computed elsewhere.

The file is Parquet (local or s3://, one file or a directory) with a unique `id`, `embedding` (a list of
floats of one width) and, optionally, `probs` (class probabilities of the user's model), `label` (int;
null = unknown: what the simulated oracle answers) and `path` (the image URI that annotators are shown).
It is checked once, streaming, then every round `write_round_splits` writes it into the round's embeddings
contract (core/embeddings.py), split by the ledger's labeled ids, so the selection reads user features the
way it reads a model's, sharded k-center included. Memory: one record batch at a time, never the file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ray_al.acquisition.base import PROB_SUM_ATOL
from ray_al.core import storage
from ray_al.core.embeddings import SplitFiles, batches, write_by_ids
from ray_al.core.ids import duplicated

REQUIRED = ("id", "embedding")


class EmbeddingsError(ValueError):
    """A `data.embeddings` file that breaks its contract (module docstring)."""


@dataclass(frozen=True)
class UserEmbeddings:
    uri: str
    rows: int
    dim: int
    num_classes: int  # width of `probs`; 0 when the file has none
    id_type: str  # "int64" or "string"
    has_labels: bool
    has_paths: bool


def _dataset(uri: str) -> pads.Dataset:
    fs, path = storage.pyarrow_fs(uri)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"data.embeddings '{uri}' not found: give a Parquet file or directory (local or "
                                "s3://; for s3:// also check data.s3_endpoint).") from exc


def _list_width(uri: str, dataset: pads.Dataset, column: str) -> int:
    """The one width of a list-of-float column (checked batch by batch), refusing ragged rows and NaNs."""
    kind = dataset.schema.field(column).type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
            or not pa.types.is_floating(kind.value_type):
        raise EmbeddingsError(f"data.embeddings '{uri}': `{column}` must be a list of floats, got {kind}.")
    width = kind.list_size if pa.types.is_fixed_size_list(kind) else None
    for batch in batches(dataset, ["id", column]):
        lengths = pc.list_value_length(batch.column(column)).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(np.isnan(lengths.astype(float)) | (lengths != (width or lengths[0])))
        if len(bad):
            raise EmbeddingsError(f"data.embeddings '{uri}': `{column}` of id {batch.column('id')[bad[0]].as_py()!r} "
                                  f"is empty or has another width than the rows before it ({width or lengths[0]}).")
        width = width or int(lengths[0])
        values = np.asarray(pc.list_flatten(batch.column(column)), dtype=np.float32).reshape(-1, width)
        _refuse_nan(uri, column, batch, values)
        if column == "probs":
            _check_sums(uri, batch, values)
    return int(width or 0)


def _refuse_nan(uri: str, column: str, batch: pa.RecordBatch, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise EmbeddingsError(f"data.embeddings '{uri}': `{column}` of id {batch.column('id')[bad[0]].as_py()!r} "
                              f"holds NaN or infinity ({len(bad)} such rows in this batch): fix or drop them.")


def _check_sums(uri: str, batch: pa.RecordBatch, probs: np.ndarray) -> None:
    sums = probs.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero((np.abs(sums - 1.0) > PROB_SUM_ATOL) | (probs < 0).any(axis=1))
    if len(bad):
        raise EmbeddingsError(f"data.embeddings '{uri}': `probs` of id {batch.column('id')[bad[0]].as_py()!r} is "
                              f"not a distribution (sum {sums[bad[0]]:.4f}): store softmax outputs, or leave "
                              "`probs` out and use a method that needs none (typiclust, probcover, kcenter, random).")


def _check_ids(uri: str, dataset: pads.Dataset) -> None:
    ids = dataset.to_table(columns=["id"]).column("id")
    kind = ids.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise EmbeddingsError(f"data.embeddings '{uri}': `id` must be int64 or string, got {kind}.")
    if not len(ids):
        raise EmbeddingsError(f"data.embeddings '{uri}' has no rows.")
    if ids.null_count:
        raise EmbeddingsError(f"data.embeddings '{uri}': {ids.null_count} rows have a null `id`.")
    count, shown = duplicated(ids)
    if count:
        raise EmbeddingsError(f"data.embeddings '{uri}' has {count} duplicate ids (e.g. {shown}): one row per image.")


def check_user_embeddings(uri: str) -> UserEmbeddings:
    """The contract of a `data.embeddings` file, checked streaming; errors name the id and what to do."""
    dataset = _dataset(uri)
    missing = [c for c in REQUIRED if c not in dataset.schema.names]
    if missing:
        raise EmbeddingsError(f"data.embeddings '{uri}' has no {', '.join(f'`{c}`' for c in missing)} column "
                              f"(columns: {', '.join(dataset.schema.names)}); it needs `id` and `embedding`.")
    _check_ids(uri, dataset)
    _list_width(uri, dataset, "embedding")
    if "probs" in dataset.schema.names:
        _list_width(uri, dataset, "probs")
    if "label" in dataset.schema.names and not pa.types.is_integer(dataset.schema.field("label").type):
        raise EmbeddingsError(f"data.embeddings '{uri}': `label` must be an integer class index (null = unknown), "
                              f"got {dataset.schema.field('label').type}.")
    return describe(uri)


def describe(uri: str) -> UserEmbeddings:
    """What a file that passed `check_user_embeddings` holds, from its schema and first row: the run checks
    the file once (when the pool is prepared); every round reads this instead of scanning it again."""
    dataset = _dataset(uri)
    names = dataset.schema.names
    lists = [c for c in ("embedding", "probs") if c in names]
    first = next(batches(dataset, lists))
    width = {c: len(first.column(c)[0]) for c in lists}
    id_kind = dataset.schema.field("id").type
    return UserEmbeddings(uri=uri, rows=dataset.count_rows(), dim=width["embedding"],
                          num_classes=width.get("probs", 0),
                          id_type="int64" if pa.types.is_integer(id_kind) else "string",
                          has_labels="label" in names, has_paths="path" in names)


def _contract_batch(batch: pa.RecordBatch, user: UserEmbeddings) -> pa.RecordBatch:
    """A batch of the user's rows in the embeddings contract: fixed-size float32 lists, nothing corrupt."""
    columns = {"id": batch.column("id"),
               "embedding": _fixed(batch.column("embedding"), user.dim)}
    if user.num_classes:
        columns["probs"] = _fixed(batch.column("probs"), user.num_classes)
    columns["corrupt"] = pa.array(np.zeros(batch.num_rows, bool))
    return pa.RecordBatch.from_pydict(columns)


def _fixed(column: pa.Array, width: int) -> pa.FixedSizeListArray:
    values = pc.cast(pc.list_flatten(column), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, width)


def write_round_splits(user: UserEmbeddings, labeled_ids: pa.Array, out_uri: str) -> dict[str, int]:
    """The user's rows as a round's `split=unlabeled` and `split=labeled` files under out_uri, split by
    `labeled_ids`, streaming (one batch in memory). A split is cut into files of FILE_ROWS rows, so k-center's
    shard actors (which take whole files) can share it. Returns the rows written per split."""
    dataset = _dataset(user.uri)
    columns = ["id", "embedding"] + (["probs"] if user.num_classes else [])
    fs, root = storage.pyarrow_fs(out_uri)
    files = {"unlabeled": SplitFiles(fs, root, "unlabeled"), "labeled": SplitFiles(fs, root, "labeled")}
    labeled = pa.array(labeled_ids).cast(dataset.schema.field("id").type)
    try:
        for batch in batches(dataset, columns):
            write_by_ids(files, _contract_batch(batch, user), labeled)
    finally:
        for split in files.values():
            split.close()
    return {name: split.rows for name, split in files.items()}


def has_probs(uri: str) -> bool:
    """Whether the file holds class probabilities (its schema only: no rows read)."""
    return "probs" in _dataset(uri).schema.names


def label_classes(uri: str) -> int:
    """1 + the largest known label of the file (0 when it has none)."""
    labels = _dataset(uri).to_table(columns=["label"]).column("label")
    largest = pc.max(labels).as_py()
    return 0 if largest is None else int(largest) + 1
