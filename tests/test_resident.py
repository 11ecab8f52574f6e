"""The resident worker group (ray_al.workers.resident): one Ray Train fit serving round after round.

It must train the very model a per-round fit trains (same data, seeds, steps), write the embeddings the
Ray Data actor pool writes, keep nothing from one round in the next, and continue a round from its
checkpoint when Ray Train restarts a killed worker.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_al.core import config as config_mod
from ray_al.workers.resident import Job, JobBoard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the board (plain Python)


def test_board_hands_a_job_to_every_rank_and_counts_it_done_once_all_report() -> None:
    board = JobBoard(world=2)
    assert board.next_job(after=0, timeout=0) is None
    board.post(Job(seq=1, kind="train", name="round_0000"))
    assert board.next_job(0, 0).seq == 1 and board.next_job(1, 0) is None  # rank already past it
    board.finish(1, rank=1, result=None)
    assert board.wait_done(1, 0) == (False, None)
    board.finish(1, rank=0, result={"state": b"x"})
    assert board.wait_done(1, 0) == (True, {"state": b"x"})
    assert board.next_job(0, 0) is None  # done: a restarted group does not redo it
    board.finish(7, rank=0, result="stale")  # a report for another job changes nothing
    assert board.wait_done(1, 0) == (True, {"state": b"x"})


def test_board_restart_makes_every_rank_redo_an_unfinished_job() -> None:
    board = JobBoard(world=2)
    board.post(Job(seq=3, kind="train"))
    board.finish(3, rank=0, result="from the dead group")
    board.restart()  # rank 1 died: DDP needs both ranks again, so rank 0's report no longer counts
    board.finish(3, rank=1, result=None)
    assert board.wait_done(3, 0)[0] is False
    assert board.next_job(0, 0).seq == 3
    board.finish(3, rank=0, result="redone")
    assert board.wait_done(3, 0) == (True, "redone")
    board.restart()  # a finished job stays finished
    assert board.wait_done(3, 0) == (True, "redone")


# ----------------------------------------------------------------------------- through Ray Train


@pytest.fixture(scope="module")
def pool(ray_local, tmp_path_factory):
    from ray_al.data.pool import prepare, read_labels

    root = tmp_path_factory.mktemp("resident")
    cfg = config_mod.load(None, ["data.pool_size=64", "data.test_size=20"])
    spec = prepare(cfg.data, str(root), seed=0)
    ids, labels = read_labels(spec.pool_uri)
    order = np.argsort(ids)
    return spec, np.asarray(ids)[order], np.asarray(labels)[order], root


def _cfg(**train) -> config_mod.Config:
    cfg = config_mod.load(None, ["train.method=moby", "train.batch_size=8", "train.unlabeled_batch_size=16",
                                 "train.ssl_options.queue_size=64", "train.checkpoint_every_s=0"])
    return config_mod.replace(cfg, train=train) if train else cfg


def _round(pool, n: int, seed: int, **more):
    """Round `seed - 1000`'s request: the first n labeled ids, 2 epochs."""
    from ray_al.workers.train import TrainRequest

    _, ids, labels, _ = pool
    return TrainRequest(**{**dict(name=f"round_{seed - 1000:04d}", labeled_ids=ids[:n], labeled_labels=labels[:n],
                                  seed=seed, epochs=2, progress=False), **more})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def per_round_fit(pool):
    """Round 1 (24 labels) as a fit of its own: the reference."""
    from ray_al.workers.train import fit

    spec, _, _, root = pool
    return fit(_cfg(), spec, _round(pool, 24, 1001), storage_uri=str(root / "per_round"))


@pytest.fixture(scope="module")
def served(pool):
    """One resident group: round 0, round 1, then round 1's embedding."""
    from ray_al.workers.embed import EmbedOptions
    from ray_al.models.weights import learner_kwargs, state_to_bytes
    from ray_al.workers.resident import ResidentGroup

    spec, ids, _, root = pool
    group = ResidentGroup(_cfg(), spec, str(root / "resident"))
    kwargs, options = learner_kwargs(_cfg(), spec), EmbedOptions(batch_size=4)
    try:
        first = group.train(_round(pool, 16, 1000))
        second = group.train(_round(pool, 24, 1001))
        out = str(root / "resident_embeddings")
        computed = group.embed(state_to_bytes(second.state_dict), kwargs, options, out, ids[:24], keep_features=True)
        # the next round of a frozen encoder: second's encoder, another head (first's), another labeled set
        mixed = {**second.state_dict, **{k: v for k, v in first.state_dict.items() if k.startswith("classifier.")}}
        again = group.embed(state_to_bytes(mixed), kwargs, options, str(root / "kept"), ids[:16], keep_features=True)
    finally:
        group.close()
    assert group.thread is None
    assert computed["features_reused"] is False and again["features_reused"] is True
    return first, second, out, (mixed, str(root / "kept"))


def test_a_resident_round_trains_the_model_of_a_fit_of_its_own(served, per_round_fit) -> None:
    first, second, _, _ = served
    assert second.metrics["steps"] == per_round_fit.metrics["steps"] and second.metrics["start_epoch"] == 0
    assert [h["epoch"] for h in second.history] == [0, 1]
    # the second round of the group starts from nothing of the first (weights, MoBY queues, BN statistics)
    _assert_same_state(second.state_dict, per_round_fit.state_dict)
    assert not torch.equal(first.state_dict["classifier.weight"], second.state_dict["classifier.weight"])


def test_resident_embeddings_equal_the_actor_pools(pool, served, per_round_fit, tmp_path) -> None:
    from ray_al.data.reader import embedding_input
    from ray_al.workers.embed import EmbedOptions, embed_splits
    from ray_al.core.embeddings import matrix, read_embeddings, split_files
    from ray_al.models.weights import learner_kwargs, state_to_bytes

    spec, ids, _, _ = pool
    _, _, resident_out, _ = served
    reference = str(tmp_path / "actor_pool")
    embed_splits(embedding_input(spec, ids[:24]), state_to_bytes(per_round_fit.state_dict),
                 learner_kwargs(_cfg(), spec), spec, EmbedOptions(batch_size=16), reference)
    # files of FILE_BATCHES batches (4 x 4 rows): sharded k-center hands whole files to its shards
    assert len(split_files(resident_out, "unlabeled")) == 3 and len(split_files(resident_out, "labeled")) == 2
    for split, rows in (("labeled", 24), ("unlabeled", 40), ("test", 20)):
        got, want = (read_embeddings(u, split).sort_by("id") for u in (resident_out, reference))
        assert got.num_rows == want.num_rows == rows, split
        assert got.column("id").to_pylist() == want.column("id").to_pylist()
        for column in ("embedding", "probs"):
            np.testing.assert_allclose(matrix(got.column(column)), matrix(want.column(column)), atol=1e-5)
        if split == "test":
            assert got.column("label").to_pylist() == want.column("label").to_pylist()


def test_a_killed_resident_worker_continues_the_round_from_its_checkpoint(pool, per_round_fit, tmp_path) -> None:
    from ray_al.core.faults import FaultInjection
    from ray_al.workers.resident import ResidentGroup

    spec = pool[0]
    marker = tmp_path / "killed"
    group = ResidentGroup(_cfg(), spec, str(tmp_path / "resident"))
    try:
        out = group.train(_round(pool, 24, 1001, fault_injection=FaultInjection(
            epoch=1, step=0, rank=0, marker=str(marker))))
    finally:
        group.close()
    assert "epoch 1 step 0" in marker.read_text()  # the worker was killed in the second epoch
    assert out.metrics["start_epoch"] == 1 and [h["epoch"] for h in out.history] == [1]
    _assert_same_state(out.state_dict, per_round_fit.state_dict)


def test_relative_paths_mean_the_drivers_working_directory(pool, tmp_path, monkeypatch) -> None:
    """`make run` uses run.dir=runs/default: the workers, which run in Ray Train's artifacts directory,
    must still read the pool and write the embeddings where the driver means."""
    import dataclasses
    import os

    from ray_al.workers.embed import EmbedOptions
    from ray_al.core.embeddings import read_embeddings
    from ray_al.models.weights import learner_kwargs, state_to_bytes
    from ray_al.workers.resident import ResidentGroup

    spec, ids, _, _ = pool
    monkeypatch.chdir(tmp_path)
    relative = dataclasses.replace(spec, pool_uri=os.path.relpath(spec.pool_uri), test_uri=os.path.relpath(spec.test_uri))
    assert not os.path.isabs(relative.pool_uri)
    cfg = config_mod.load(None, ["train.batch_size=8", "train.epochs=1"])
    group = ResidentGroup(cfg, relative, "ray_train")
    try:
        out = group.train(_round(pool, 16, 1000, epochs=1))
        group.embed(state_to_bytes(out.state_dict), learner_kwargs(cfg, spec), EmbedOptions(), "run/embeddings",
                    ids[:16])
    finally:
        group.close()
    assert read_embeddings(str(tmp_path / "run" / "embeddings"), "unlabeled").num_rows == 48


def test_a_frozen_encoders_kept_features_give_the_embeddings_of_a_fresh_forward(pool, served) -> None:
    """The second embedding of one encoder ran its head on the features the workers kept: the same columns
    as an in-process forward of that state (keep_features is the loop's choice for head-only rounds)."""
    from ray_al.workers.embed import EmbedOptions, FeatureModel
    from ray_al.core.embeddings import matrix, read_embeddings
    from ray_al.models.weights import learner_kwargs, state_to_bytes
    from ray_al.workers.resident import DecodedRows

    spec, ids, _, _ = pool
    mixed, kept_out = served[3]
    model = FeatureModel(state_to_bytes(mixed), learner_kwargs(_cfg(), spec), EmbedOptions(batch_size=4))
    for split, uri, with_label in (("unlabeled", spec.pool_uri, False), ("test", spec.test_uri, True)):
        rows = DecodedRows.read(uri, spec, "skip", with_label=with_label)
        mask = ~np.isin(rows.ids, ids[:16])
        want = model.table(rows.rows(mask))
        got = read_embeddings(kept_out, split).sort_by("id")
        assert got.column("id").to_pylist() == want.column("id").to_pylist()
        for column in ("embedding", "probs"):
            np.testing.assert_allclose(matrix(got.column(column)), matrix(want.column(column)), atol=1e-5)


def test_rank_0_reports_decoding_and_feature_progress_in_lines(pool, capsys) -> None:
    """A resident group's one-off steps (decoding the pool, a frozen encoder's features) can take minutes on a
    large pool at 224 px: rank 0 prints how far it is; the other ranks print nothing."""
    from ray_al.models.weights import learner_kwargs, state_to_bytes
    from ray_al.workers.embed import EmbedOptions, FeatureModel
    from ray_al.workers.resident import DecodedRows, RankFeatures, _rank0_lines

    spec, _, _, _ = pool
    assert _rank0_lines(1) is None
    DecodedRows.read(spec.pool_uri, spec, "skip", with_label=False, progress=_rank0_lines(0))
    assert capsys.readouterr().out == ""  # done within the interval: a small pool's rounds print nothing
    rows = DecodedRows.read(spec.pool_uri, spec, "skip", with_label=False, progress=_rank0_lines(0, every_s=0.0))
    decoded = capsys.readouterr().out.splitlines()
    assert decoded[-1] == f"resident group: decoding {spec.pool_uri.rsplit('/', 1)[-1]} at {spec.image_size} px: images 64/64"
    from ray_al.models.weights import build_learner

    model = FeatureModel(state_to_bytes(build_learner(learner_kwargs(_cfg(), spec)).state_dict()), learner_kwargs(_cfg(), spec), EmbedOptions(batch_size=8))
    share = np.arange(len(rows.ids)) % 2 == 0
    features = RankFeatures.of(model, rows, share, 8, _rank0_lines(0, every_s=0.0), "pool")
    assert features.values.shape[0] == 32
    assert capsys.readouterr().out.splitlines()[-1] == \
        "resident group: encoder features of this rank's pool rows: images 32/32"
