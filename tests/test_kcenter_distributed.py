"""k-center over Ray shard actors on a simulated 2-node cluster (ray.cluster_utils.Cluster): same picks
as single-process, shards spread over nodes, few round trips, a killed actor restarts and resyncs."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster: no token auth
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ray_al.acquisition.kcenter_greedy import KCenterOptions, kcenter_greedy  # noqa: E402
from ray_al.workers.kcenter_shards import EmbeddingFiles, kcenter_select_distributed  # noqa: E402

D = 32
K = 100


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # another module's local Ray
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def write_file(path, ids, x, fixed=True, corrupt=None):
    flat = pa.array(np.asarray(x, np.float32).ravel(), pa.float32())
    if fixed:
        emb = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        emb = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)), flat)
    probs = np.full((len(ids), 10), 0.1, np.float32)
    columns = {"id": pa.array(ids, pa.int64()), "embedding": emb,
               "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), 10)}
    if corrupt is not None:  # the embed step's flag for an image that did not decode
        columns["corrupt"] = pa.array(np.asarray(corrupt, bool))
    pq.write_table(pa.table(columns), path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Clustered embeddings in 7 Parquet files of uneven sizes (one empty, one list<float>), ids shuffled."""
    rng = np.random.default_rng(0)
    means = rng.standard_normal((12, D)).astype(np.float32) * 3
    n = 3000
    x = means[rng.integers(0, 12, n)] + rng.standard_normal((n, D)).astype(np.float32)
    x[2500:2510] = x[10:20]  # duplicates across files
    ids = rng.choice(10**9, n, replace=False).astype(np.int64)
    root = tmp_path_factory.mktemp("emb")
    sizes = [700, 0, 400, 900, 300, 200, 500]
    files, s = [], 0
    for i, m in enumerate(sizes):
        f = str(root / f"part-{i:03d}.parquet")
        write_file(f, ids[s : s + m], x[s : s + m], fixed=(i != 3))
        files.append(f)
        s += m
    labeled = means[:4] + rng.standard_normal((4, D)).astype(np.float32)  # the labeled set misses 8 clusters
    return files[::-1], ids, x, labeled  # unsorted on purpose: the order is the sorted file list


def test_two_shards_on_two_nodes_match_single_process(cluster, pool):
    files, ids, x, labeled = pool
    want = ids[kcenter_greedy(x, K, labeled_features=labeled)].tolist()
    got, st = kcenter_select_distributed(EmbeddingFiles(files), K, labeled_features=labeled,
                                         options=KCenterOptions(shards=2))
    assert got == want
    assert st["shards"] == 2 and len(set(st["nodes"])) == 2  # SPREAD put one shard on each node
    assert st["round_trips"] <= K // 5, st
    assert sum(st["rows_per_shard"]) == len(x)


def test_killed_shard_actor_restarts_and_selection_is_identical(cluster, pool):
    files, ids, x, labeled = pool
    want = ids[kcenter_greedy(x, K, labeled_features=labeled)].tolist()
    killed = []

    def kill_first_shard(round_no, group):
        if round_no == 2:
            ray.kill(group.handles[0], no_restart=False)
            killed.append(round_no)

    got, st = kcenter_select_distributed(EmbeddingFiles(files), K, labeled_features=labeled,
                                         options=KCenterOptions(shards=2, batch=16, on_pass=kill_first_shard))
    assert killed and st["resyncs"] >= 1
    assert got == want


def test_labeled_and_included_ids(cluster, pool):
    files, ids, x, labeled = pool
    rng = np.random.default_rng(3)
    keep = np.sort(rng.choice(len(x), 1200, replace=False))  # e.g. an uncertainty pre-filter
    lab_pos = keep[rng.choice(len(keep), 5, replace=False)]
    want = ids[keep][kcenter_greedy(x[keep], 40, np.searchsorted(keep, lab_pos), labeled_features=labeled)]
    got, st = kcenter_select_distributed(EmbeddingFiles(files), 40, labeled_features=labeled,
                                         include_ids=ids[keep].tolist(), labeled_ids=ids[lab_pos].tolist() + [-5],
                                         options=KCenterOptions(shards=2))
    assert got == want.tolist()
    assert st["labeled_ids_missing"] == 1


def test_bad_inputs_are_named(cluster, tmp_path):
    rng = np.random.default_rng(1)
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    write_file(a, np.arange(50), rng.standard_normal((50, 8)))
    write_file(b, np.arange(50, 100), rng.standard_normal((50, 6)))
    with pytest.raises(ValueError, match="disagree on the embedding dimension.*d=8.*d=6"):
        kcenter_select_distributed(EmbeddingFiles([a, b]), 5, labeled_features=None, options=KCenterOptions(shards=2))
    x = rng.standard_normal((60, 8))
    x[7, 1] = np.nan
    c = str(tmp_path / "c.parquet")
    write_file(c, np.arange(1000, 1060), x)
    with pytest.raises(ValueError, match=r"NaN or inf.*\[1007\]"):
        kcenter_select_distributed(EmbeddingFiles([a, c]), 5, labeled_features=None, options=KCenterOptions(shards=1))


def test_corrupt_rows_are_never_selected(cluster, tmp_path):
    """An undecodable image (corrupt=True, embedded from zero pixels) must not reach the annotators through
    the sharded path either: the shards drop those rows, the rest is the same selection as one process."""
    rng = np.random.default_rng(5)
    n = 400
    x = rng.standard_normal((n, 8)).astype(np.float32)
    ids = np.arange(5000, 5000 + n)
    corrupt = np.zeros(n, bool)
    corrupt[rng.choice(n, 12, replace=False)] = True
    x[corrupt] += 40.0  # far from everything: k-center would pick them first
    files = []
    for i, (a, b) in enumerate([(0, 150), (150, 260), (260, 400)]):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        write_file(files[-1], ids[a:b], x[a:b], fixed=(i != 1), corrupt=corrupt[a:b])
    got, st = kcenter_select_distributed(EmbeddingFiles(files), 20, options=KCenterOptions(shards=2))
    assert not set(got) & set(ids[corrupt].tolist())
    assert got == ids[~corrupt][kcenter_greedy(x[~corrupt], 20)].tolist()
    assert sum(st["rows_per_shard"]) == n - corrupt.sum()


@pytest.fixture(scope="module")
def cifar_round(tmp_path_factory, cifar_parquet):
    """Round 0 of a CIFAR-10 cycle (4,000-image pool, 200 labels, small CNN, 2 epochs), run as users run
    it; its own local Ray (RAY_ADDRESS=local), beside the test cluster."""
    import subprocess
    import sys
    from pathlib import Path

    run_dir = tmp_path_factory.mktemp("cifar") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ray_al.cycle", "--config", "configs/cifar10.yaml", "al.rounds=0", "train.epochs=2",
         "data.test_size=200", f"run.dir={run_dir}"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(run_dir / "rounds" / "0000" / "embeddings")


def test_cifar10_cycle_embeddings_on_two_nodes_few_round_trips(cluster, cifar_round):
    """The issue's figure: on real embeddings (not synthetic clusters), 2 shards on 2 nodes pick exactly
    what one process picks, in at most k/5 driver-shard round trips, for the cycle's budget k=200."""
    from ray_al.core.embeddings import matrix, read_embeddings, split_files

    k = 200
    unl = read_embeddings(cifar_round, "unlabeled", columns=["id", "embedding"])
    lab = read_embeddings(cifar_round, "labeled", columns=["embedding"])
    x, ids, labeled = matrix(unl.column("embedding")), np.asarray(unl.column("id").to_pylist()), \
        matrix(lab.column("embedding"))
    assert len(x) == 3800 and len(labeled) == 200
    want = ids[kcenter_greedy(x, k, labeled_features=labeled)].tolist()
    got, st = kcenter_select_distributed(EmbeddingFiles(split_files(cifar_round, "unlabeled")), k,
                                         labeled_features=labeled, options=KCenterOptions(shards=2))
    assert got == want
    assert len(set(st["nodes"])) == 2 and sum(st["rows_per_shard"]) == len(x)
    assert st["round_trips"] <= k // 5, st
    print(f"CIFAR-10 embeddings: n={len(x)} d={x.shape[1]} k={k}: {st['round_trips']} round trips, "
          f"{st.get('passes')} passes")
