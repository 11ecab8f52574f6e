"""A user's own embeddings (data.embeddings): the contract checks and the per-round split files (no Ray)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core.embeddings import matrix, read_decodable, read_embeddings
from ray_al.data.user_embeddings import EmbeddingsError, check_user_embeddings, write_round_splits


def _write(file, n=50, d=8, classes=3, probs=True, ids=None, **extra):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float64)  # users store float64 lists too: cast on the way in
    cols = {"id": ids if ids is not None else np.arange(100, 100 + n), "embedding": list(emb)}
    if probs:
        p = rng.random((n, classes))
        cols["probs"] = list(p / p.sum(axis=1, keepdims=True))
    cols.update(extra)
    pq.write_table(pa.table(cols), file, row_group_size=16)
    return emb


def test_a_valid_file_is_described(tmp_path):
    _write(tmp_path / "e.parquet", label=pa.array([1, None] * 25, pa.int64()), path=[f"s3://b/{i}.jpg" for i in range(50)])
    user = check_user_embeddings(str(tmp_path / "e.parquet"))
    assert (user.rows, user.dim, user.num_classes, user.id_type) == (50, 8, 3, "int64")
    assert user.has_labels and user.has_paths


@pytest.mark.parametrize("case, match", [
    ("no_embedding", "no `embedding` column"),
    ("duplicate", "1 duplicate ids .*'a'"),
    ("ragged", "id 'c'.*another width"),
    ("nan", "id 'b'.*NaN"),
    ("probs", "id 'a'.*not a distribution"),
    ("label", "`label` must be an integer"),
    ("strings", "must be a list of floats"),
])
def test_bad_files_are_refused_naming_the_row(tmp_path, case, match):
    ids = ["a", "b", "c"]
    emb = [[0.0, 1.0], [float("nan"), 1.0] if case == "nan" else [1.0, 0.0], [1.0] if case == "ragged" else [2.0, 2.0]]
    cols = {"id": ["a", "a", "c"] if case == "duplicate" else ids,
            "embedding": [["x", "y"]] * 3 if case == "strings" else emb}
    if case == "no_embedding":
        del cols["embedding"]
    if case == "probs":
        cols["probs"] = [[0.9, 0.3], [0.5, 0.5], [1.0, 0.0]]
    if case == "label":
        cols["label"] = ["cat", "dog", "cat"]
    pq.write_table(pa.table(cols), tmp_path / "bad.parquet")
    with pytest.raises(EmbeddingsError, match=match):
        check_user_embeddings(str(tmp_path / "bad.parquet"))


def test_missing_file_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.embeddings .* not found"):
        check_user_embeddings(str(tmp_path / "none.parquet"))


@pytest.mark.parametrize("probs", [True, False])
def test_round_splits_hold_every_row_once_in_the_contract(tmp_path, probs):
    emb = _write(tmp_path / "e.parquet", probs=probs)
    user = check_user_embeddings(str(tmp_path / "e.parquet"))
    labeled = pa.array([100, 117, 149], pa.int64())
    counts = write_round_splits(user, labeled, str(tmp_path / "round"))
    assert counts == {"unlabeled": 47, "labeled": 3}
    lab = read_embeddings(str(tmp_path / "round"), "labeled")
    assert sorted(lab.column("id").to_pylist()) == [100, 117, 149]
    ids, read = read_decodable(str(tmp_path / "round"), "unlabeled", ["embedding"] + (["probs"] if probs else []))
    assert len(ids) == 47 and not set(ids.to_pylist()) & {100, 117, 149}
    assert read["embedding"].dtype == np.float32
    np.testing.assert_allclose(read["embedding"], emb[np.asarray(ids.to_pylist()) - 100].astype(np.float32))
    assert ("probs" in read) == probs and pa.types.is_fixed_size_list(lab.schema.field("embedding").type)
    assert matrix(lab.column("embedding")).shape == (3, 8)


def test_round_splits_are_cut_into_files_that_shard_actors_share(tmp_path, monkeypatch):
    import ray_al.core.embeddings as embeddings
    from ray_al.core.embeddings import split_files
    from ray_al.workers.kcenter_shards import load_embeddings, partition_files

    monkeypatch.setattr(embeddings, "FILE_ROWS", 10)
    emb = _write(tmp_path / "e.parquet", probs=False)
    counts = write_round_splits(check_user_embeddings(str(tmp_path / "e.parquet")), pa.array([100, 117, 149]),
                                str(tmp_path / "round"))
    files = split_files(str(tmp_path / "round"), "unlabeled")
    assert counts["unlabeled"] == 47 and [pq.read_metadata(f).num_rows for f in files] == [10, 10, 10, 10, 7]
    parts = partition_files(files, 2)
    assert len(parts) == 2 and sum(parts, []) == files
    loaded = [load_embeddings(part) for part in parts]
    ids = np.concatenate([i for i, _, _ in loaded])
    assert ids.tolist() == [i for i in range(100, 150) if i not in (100, 117, 149)]
    np.testing.assert_allclose(np.concatenate([x for _, x, _ in loaded]), emb[ids - 100].astype(np.float32))


def test_shard_loading_drops_undecodable_and_excluded_rows_and_names_null_embeddings(tmp_path):
    from ray_al.workers.kcenter_shards import load_embeddings

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    corrupt = pa.array([False, True, None, False, False, False, False, False, False, True])
    table = pa.table({"id": np.arange(10), "embedding": pa.FixedSizeListArray.from_arrays(x.reshape(-1), 4),
                      "corrupt": corrupt})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=3)
    ids, got, d = load_embeddings([str(tmp_path / "a.parquet")], include_ids=[0, 1, 2, 3, 5, 8, 9])
    assert ids.tolist() == [0, 3, 5, 8] and d == 4  # 1 and 9 corrupt, 2 of unknown state, 4 6 7 excluded
    np.testing.assert_array_equal(got, x[[0, 3, 5, 8]])
    ragged = pa.table({"id": [7, 8, 9], "embedding": pa.array([[1.0, 2.0], None, [3.0, 4.0]])})
    pq.write_table(ragged, tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"rows \[1\] have a null 'embedding' \(ids \[8\]\)"):
        load_embeddings([str(tmp_path / "b.parquet")])
