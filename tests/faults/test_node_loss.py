"""A node lost mid-step, on a simulated cluster (ray.cluster_utils.Cluster: a head with no CPUs, so every
actor runs on a worker node that can be taken away). The node goes while the step is under way, as the
drill decides (ray_al.core.faults' hold points, or k-center's between-pass callback), and a replacement node
joins as an autoscaler would add one. The step must complete with the result of an undisturbed run.

(A node holding a training worker: tests/test_train_distributed.py, on that module's 2-node cluster.)
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster: no token auth
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ray_al.core.embeddings import matrix, read_embeddings  # noqa: E402
from ray_al.core.faults import HOLD_AT, HOLD_MARKER  # noqa: E402
from ray_al.acquisition.kcenter_greedy import KCenterOptions, kcenter_greedy  # noqa: E402
from ray_al.workers.kcenter_shards import EmbeddingFiles, kcenter_select_distributed  # noqa: E402
from tests.faults.drill import lose_node_during  # noqa: E402
from tests.test_embed import embed_one, learner_kwargs, make_spec, model_state, png_table, reference, write  # noqa: E402
from tests.test_kcenter_distributed import write_file  # noqa: E402

pytestmark = pytest.mark.timeout(600)
NODE = {"num_cpus": 2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():  # another module's local Ray
        ray.shutdown()
    marker = tmp_path_factory.mktemp("held") / "held.json"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    # The job's env reaches every actor of it: the first embedding batch holds until its node is removed.
    ray.init(address=c.address, runtime_env={"env_vars": {HOLD_AT: "embed.batch", HOLD_MARKER: str(marker)}})
    yield c, marker
    ray.shutdown()
    c.shutdown()


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_an_embedding_actor_on_a_lost_node_restarts_and_each_row_is_embedded_once(cluster, tmp_path):
    c, marker = cluster
    size = 16
    pool = png_table(400, size, seed=5)
    pool_uri = write(pool, str(tmp_path / "pool.parquet"), 50)
    spec, kwargs = make_spec(pool_uri, pool_uri, size), learner_kwargs(size)
    state = model_state(kwargs)
    out = str(tmp_path / "embeddings")

    _, lost = lose_node_during(c, marker, lambda: embed_one(pool_uri, out, spec, kwargs, state, batch_size=32,
                                                            actors=1), NODE)
    assert json.loads(marker.read_text())["point"] == "embed.batch"
    assert lost not in alive_nodes()
    table = read_embeddings(out, "unlabeled")
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(pool.column("id").to_pylist())  # every row, none twice
    want = reference(pool, kwargs, state, size)
    np.testing.assert_allclose(matrix(table.column("embedding")), np.stack([want[i][0] for i in ids]),
                               rtol=1e-4, atol=1e-5)


def test_a_kcenter_shard_on_a_lost_node_restarts_and_the_selection_is_identical(cluster, tmp_path):
    c, _ = cluster
    rng = np.random.default_rng(7)
    means = rng.standard_normal((10, 16)).astype(np.float32) * 3
    x = means[rng.integers(0, 10, 1600)] + rng.standard_normal((1600, 16)).astype(np.float32)
    ids = rng.choice(10**9, len(x), replace=False).astype(np.int64)
    files = []
    for i, part in enumerate(np.array_split(np.arange(len(x)), 4)):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        write_file(files[-1], ids[part], x[part])
    labeled = means[:3]
    lost = []

    def lose_shard_zeros_node(pass_no, group):
        if pass_no == 2:
            node = ray.get(group.handles[0].info.remote())["node_id"]
            c.remove_node(next(n for n in c.worker_nodes if n.node_id == node))
            c.add_node(**NODE)
            lost.append(node)

    got, stats = kcenter_select_distributed(EmbeddingFiles(files), 60, labeled_features=labeled,
                                            options=KCenterOptions(shards=2, batch=8, on_pass=lose_shard_zeros_node))
    assert lost and lost[0] not in alive_nodes() and stats["resyncs"] >= 1
    assert got == ids[kcenter_greedy(x, 60, labeled_features=labeled)].tolist()

