"""A Ray Train worker's memory does not grow with the pool when joint SSL trains on a seeded sample of it
(train.unlabeled_per_round), and the sample is the same rows in every reader (Ray Data, resident group)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import config as config_mod
from ray_al.core.ids import seeded_sample
from ray_al.bench.memwatch import MemWatch, ray_worker_kinds
from tests.test_embed import make_spec, png_table

SIZE = 64  # decoded 64 x 64 x 3 = 12 KiB a row: the 10x pool's extra rows would take ~63 MiB in a worker


def test_seeded_sample_is_a_function_of_id_and_seed_only() -> None:
    ids = np.arange(100_000, dtype=np.int64)
    keep = seeded_sample(ids, seed=3, fraction=0.05)
    assert abs(keep.mean() - 0.05) < 0.005
    order = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(seeded_sample(ids[order], 3, 0.05), keep[order])  # any batch, any row order
    assert not np.array_equal(seeded_sample(ids, 4, 0.05), keep)  # another round, another sample
    assert seeded_sample(ids, 3, 1.0).all() and not seeded_sample(ids, 3, 0.0).any()
    assert (seeded_sample(ids, 3, 0.02) <= keep).all()  # nested: a smaller fraction keeps a subset
    names = np.array([f"img/{i}.png" for i in range(2000)], dtype=object)
    assert 0.2 < seeded_sample(names, 1, 0.3).mean() < 0.4


def test_ray_data_and_the_resident_group_sample_the_same_rows(ray_local, tmp_path) -> None:
    from ray_al.data.reader import read_split
    from ray_al.workers.resident import DecodedRows, train_tensors
    from ray_al.workers.train import TrainRequest, train_spec
    from ray_al.models.trainloop import ids_to_keys

    uri = str(tmp_path / "pool.parquet")
    pq.write_table(png_table(300, 8, seed=1), uri)
    spec = dataclasses.replace(make_spec(uri, uri, 8), pool_rows=300)
    cfg = config_mod.load(None, ["train.method=simsiam", "train.unlabeled_per_round=100"])
    labeled = np.arange(0, 300, 30)
    job = train_spec(cfg, spec, TrainRequest(name="t", labeled_ids=labeled, labeled_labels=np.zeros(10, np.int64),
                                             seed=5, epochs=1))
    assert job.unlabeled_fraction == pytest.approx(100 / 290)
    streamed = read_split(uri, columns=["id"], exclude_ids=labeled, sample=(job.request.seed, job.unlabeled_fraction))
    streamed_ids = sorted(streamed.to_pandas()["id"].tolist())
    assert 60 <= len(streamed_ids) <= 140
    data = train_tensors(DecodedRows.read(uri, spec, "skip", with_label=False), job)
    rows = np.arange(300)
    expected = rows[~np.isin(rows, labeled) & seeded_sample(rows, 5, job.unlabeled_fraction)]
    assert streamed_ids == expected.tolist()
    assert np.array_equal(data.unlabeled_keys.numpy(), ids_to_keys(expected))


def _pool(uri: str, copies: int, base: pa.Table) -> str:
    with pq.ParquetWriter(uri, base.schema) as writer:  # never the whole 10x pool in this process
        for k in range(copies):
            ids = pa.array(np.arange(k * base.num_rows, (k + 1) * base.num_rows, dtype=np.int64))
            writer.write_table(base.set_column(0, "id", ids), row_group_size=100)
    return uri


def test_a_training_workers_memory_does_not_grow_with_the_pool(ray_local, tmp_path) -> None:
    """Peak heap of the Ray Train worker for a joint SimSiam round on a 600-row pool and on a 6,000-row
    pool, both with train.unlabeled_per_round=300: within a margin. Without the sample the 10x worker
    holds the whole decoded pool: measured the same way, it must grow by more than the margin (so the
    measurement can tell)."""
    from ray_al.workers.train import TrainRequest, fit

    base = png_table(600, SIZE, seed=2, smooth=False)
    one = _pool(str(tmp_path / "pool1.parquet"), 1, base)
    ten = _pool(str(tmp_path / "pool10.parquet"), 10, base)
    labeled = np.arange(0, 600, 20)
    labels = base.column("label").to_numpy()[labeled]
    peaks = {}
    for name, uri, rows, sample in (("1x", one, 600, 300), ("10x", ten, 6000, 300), ("10x whole", ten, 6000, 0)):
        cfg = config_mod.load(None, ["train.method=simsiam", "train.batch_size=16", "train.unlabeled_batch_size=32",
                                     f"train.unlabeled_per_round={sample}", "model.backbone=lenet"])
        spec = dataclasses.replace(make_spec(uri, one, SIZE), pool_rows=rows)
        with MemWatch(ray_worker_kinds("RayTrainWorker")) as watch:
            out = fit(cfg, spec, TrainRequest(name=name.replace(" ", "_"), labeled_ids=labeled, labeled_labels=labels,
                                              seed=1, epochs=1, progress=False), storage_uri=str(tmp_path / "train"))
        assert watch.pids("actor"), "no Ray Train worker process was seen"
        peaks[name] = {**watch.peaks()["actor"], "steps": out.metrics["steps"]}
    assert peaks["10x"]["steps"] <= 2 * peaks["1x"]["steps"] < peaks["10x whole"]["steps"]  # the sample was used
    summary = ", ".join(f"{k}: {v['anon']:.0f}" for k, v in peaks.items()) + " MiB of heap"
    assert peaks["10x"]["anon"] <= peaks["1x"]["anon"] + 32.0, summary
    assert peaks["10x whole"]["anon"] > peaks["1x"]["anon"] + 32.0, summary
    print(summary)
