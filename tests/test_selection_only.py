"""Selection-only rounds on a user's own embeddings (data.embeddings): no training, no images, the simulated
or the file oracle. The loop runs in this process; only sharded k-center starts Ray."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import config as config_mod
from ray_al.core.config import ConfigError
from ray_al.loop.rounds import Cycle, finish, open_run
from ray_al.loop.rules import check_config
from ray_al.run.ledger import Ledger
from ray_al.run.rundir import SEED_ROUND

N, D, CLASSES = 600, 16, 3


def _embeddings(path, probs=True, labels=True, paths=True) -> str:
    """Three separated clusters (one per class), string ids; probs from a noisy softmax of the centres."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(CLASSES), N // CLASSES)
    centres = rng.normal(scale=6.0, size=(CLASSES, D))
    x = centres[y] + rng.normal(size=(N, D))
    cols = {"id": [f"img{i:04d}" for i in range(N)], "embedding": list(x.astype(np.float32))}
    if probs:
        logits = -((x[:, None, :] - centres[None]) ** 2).sum(-1) / 50
        p = np.exp(logits - logits.max(1, keepdims=True))
        cols["probs"] = list((p / p.sum(1, keepdims=True)).astype(np.float32))
    if labels:
        cols["label"] = pa.array(y, pa.int64())
    if paths:
        cols["path"] = [f"s3://bucket/images/img{i:04d}.jpg" for i in range(N)]
    pq.write_table(pa.table(cols), path, row_group_size=100)
    return str(path)


def _run(tmp_path, emb: str, *overrides: str, name: str = "run"):
    cfg = config_mod.load(None, [f"data.embeddings={emb}", "al.initial_size=9", "al.budget=12", "al.rounds=2",
                                 *overrides])
    check_config(cfg)  # as python -m ray_al.cycle does before opening the run
    run, pool, cfg = open_run(cfg, str(tmp_path / name), resume=False)
    rows = Cycle(cfg, run, pool, log=lambda _m: None).run_all()
    return run, pool, rows


@pytest.mark.parametrize("method", ["typiclust", "probcover", "kcenter", "random", "auto"])
def test_methods_that_need_no_probabilities_run_on_bare_embeddings(tmp_path, method):
    emb = _embeddings(tmp_path / "emb.parquet", probs=False)
    run, pool, rows = _run(tmp_path, emb, f"select.method={method}")
    assert (pool.num_classes, pool.image_column, pool.test_uri) == (CLASSES, "path", "")
    assert [r["labels"] for r in rows] == [9, 21, 33] and all(r["accuracy"] is None for r in rows)
    ledger = Ledger.load(run.uri, id_type="string")
    assert len(set(ledger.ids.tolist())) == 33  # every query new, none lost
    for r in (0, 1):
        queries = run.read_queries(r)
        assert queries.num_rows == 12 and queries.column("uri")[0].as_py().startswith("s3://bucket/images/")
    assert not (tmp_path / "run" / "rounds" / "0000" / "model.pt").exists()  # nothing trained
    if method == "auto":
        assert rows[0]["selected_by"] == "typiclust" and "no class probabilities" in rows[0]["why"]
    if method in ("typiclust", "probcover", "kcenter"):  # 3 clusters, 12 picks: every class gets some
        labels = dict(zip(ledger.ids.tolist(), ledger.labels.tolist()))
        assert {labels[i] for i in run.read_queries(0).column("id").to_pylist()} == {0, 1, 2}
    table = finish(run, log=lambda _m: None)
    assert table == rows and not (tmp_path / "run" / "learning_curve.png").exists()  # no test split: no curve


def test_a_method_that_needs_probabilities_is_refused_without_them_and_runs_with(tmp_path):
    bare = _embeddings(tmp_path / "bare.parquet", probs=False)
    with pytest.raises(ConfigError, match=r"margin read\(s\) class probabilities.*typiclust"):
        _run(tmp_path, bare, "select.method=margin", name="bare")
    with_probs = _embeddings(tmp_path / "probs.parquet")
    _, _, rows = _run(tmp_path, with_probs, "select.method=margin", name="probs")
    assert rows[0]["selected_by"] == "margin" and rows[-1]["labels"] == 33


def test_training_keys_and_a_label_free_simulated_oracle_are_refused(tmp_path):
    emb = _embeddings(tmp_path / "emb.parquet", labels=False)
    with pytest.raises(ConfigError, match="selection only.*train.method=moby"):
        _run(tmp_path, emb, "train.method=moby")
    with pytest.raises(ConfigError, match="no `label` column for the simulated oracle"):
        _run(tmp_path, emb, name="nolabels")


def test_from_zero_labels_the_file_oracle_gets_a_typical_first_batch(tmp_path):
    emb = _embeddings(tmp_path / "emb.parquet", probs=False, labels=False)
    run, pool, rows = _run(tmp_path, emb, "al.oracle=file", "al.initial=typiclust", "data.classes=[cat,dog,cow]")
    assert rows == [] and pool.class_names == ("cat", "dog", "cow")
    ids = run.read_queries(SEED_ROUND).column("id").to_pylist()
    assert len(ids) == 9 and len(set(ids)) == 9
    clusters = {int(i[3:]) // (N // CLASSES) for i in ids}
    assert clusters == {0, 1, 2}  # typicality covers the three clusters before any label


def test_sharded_kcenter_picks_what_one_process_picks(tmp_path, ray_local):
    emb = _embeddings(tmp_path / "emb.parquet", probs=False)
    one = _run(tmp_path, emb, "select.method=kcenter", name="one")[0]
    two = _run(tmp_path, emb, "select.method=kcenter", "select.shards=2", name="two")[0]
    for r in (0, 1):
        assert two.read_queries(r).column("id").to_pylist() == one.read_queries(r).column("id").to_pylist()
