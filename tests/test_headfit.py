"""A frozen encoder's head trained on stored features (ray_al.models.headfit), the labeled rows read by id
(loop.backend.labeled_features), and the pool fingerprint that keys a shared features cache. No Ray."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ray_al.core.augment import to_model_input
from ray_al.core.config import TrainConfig
from ray_al.loop.backend import labeled_features
from ray_al.core.embeddings import fixed_list, matrix
from ray_al.models import trainloop
from ray_al.models.headfit import fit_linear_head
from ray_al.models.weights import build_learner

KWARGS = {"backbone": "small_cnn", "num_classes": 4, "in_channels": 3, "image_size": 16, "mean": (0.5,) * 3,
          "std": (0.25,) * 3, "ssl": "none", "ssl_options": {}, "dropout": 0.2}


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 16, 16, 3), generator=gen, dtype=torch.uint8),
            torch.randint(0, 4, (n,), generator=gen))


def trained_through_images(x, y, train: TrainConfig, seed: int, epochs: int) -> torch.nn.Module:
    """The head as trainloop's one-worker head-only fit trains it: the encoder run over every image."""
    torch.manual_seed(seed)
    learner = build_learner(KWARGS)
    trainloop.freeze_unused(learner, True, True, False)
    plan = trainloop.EpochPlan(seed=seed, epochs=epochs, n_steps=trainloop.steps_per_epoch(
        len(x), 0, train.batch_size, train.unlabeled_batch_size, False), batch_size=train.batch_size,
        unlabeled_batch_size=train.unlabeled_batch_size, ssl_weight=0.0, use_ssl=False)
    optimizer, scheduler = trainloop.make_optimizer(learner.trainable_parameters(), train.lr, train.momentum,
                                                    train.weight_decay, plan.n_steps * epochs,
                                                    tuple(train.milestones), train.optimizer, train.lr_schedule)
    state = trainloop.TrainState(trainloop.JointObjective(learner), learner, optimizer, scheduler)
    data = trainloop.TrainTensors(x, y, torch.zeros((0, 16, 16, 3), dtype=torch.uint8))
    for epoch in range(epochs):
        torch.manual_seed((seed * 7919 + epoch) * 1009)
        trainloop.train_epoch(state, data, plan, epoch)
    return learner


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_head_fit_on_stored_features_equals_the_fit_through_the_encoder(schedule):
    x, y = images(150)
    train = dataclasses.replace(TrainConfig(), batch_size=32, lr=0.1, lr_schedule=schedule)
    want = trained_through_images(x, y, train, seed=3, epochs=4)
    torch.manual_seed(3)
    learner = build_learner(KWARGS)
    with torch.no_grad():
        learner.eval()
        features = learner.encoder(to_model_input(x)).numpy()
    before = learner.classifier.weight.detach().clone()
    history = fit_linear_head(learner, features, y.numpy(), seed=3, epochs=4, train=train)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and history[0]["steps"] == 5
    assert (learner.classifier.weight - before).abs().max() > 1e-2  # it trained
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(learner.state_dict()[name], want.state_dict()[name], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in learner.state_dict().items() if k.startswith("encoder"))


def test_labeled_rows_are_read_by_id_without_the_undecodable_ones(tmp_path):
    split = tmp_path / "features" / "split=pool"
    split.mkdir(parents=True)
    for part in range(3):  # three files of 100 rows: ids 0..299, every 7th undecodable
        ids = np.arange(part * 100, part * 100 + 100)
        pq.write_table(pa.table({"id": ids, "features": fixed_list(np.stack([ids, -ids], 1).astype(np.float32)),
                                 "corrupt": ids % 7 == 0}), split / f"{part}.parquet", row_group_size=30)
    wanted = np.array([250, 3, 14, 99, 100, 7, 1000])
    found = labeled_features(str(tmp_path / "features"), wanted)
    ids = found.column("id").to_numpy()
    assert ids.tolist() == [3, 99, 100, 250]  # 7 and 14 undecodable, 1000 absent; in the split's order
    np.testing.assert_array_equal(matrix(found.column("features")), np.stack([ids, -ids], 1))
    none = labeled_features(str(tmp_path / "features"), np.array([7]))
    assert none.num_rows == 0 and none.schema.field("features").type.list_size == 2


def test_the_pool_fingerprint_follows_the_ids_and_the_input_not_the_file(tmp_path):
    from ray_al.data.pool import PoolSpec, fingerprint

    def pool_file(name: str, ids) -> str:
        path = tmp_path / name
        pq.write_table(pa.table({"id": np.asarray(ids), "image": [b"x"] * len(ids)}), path, row_group_size=7)
        return str(path)

    spec = PoolSpec(pool_file("a.parquet", range(50)), pool_file("t.parquet", range(100, 110)), 10,
                    tuple("abcdefghij"), 32, 3, (0.5,) * 3, (0.5,) * 3, "image", "int64", 50, True)
    copy = dataclasses.replace(spec, pool_uri=pool_file("b.parquet", range(50)))
    assert fingerprint(copy) == fingerprint(spec)  # another run's copy of the same pool
    assert fingerprint(dataclasses.replace(spec, pool_uri=pool_file("c.parquet", range(1, 51)))) != fingerprint(spec)
    assert fingerprint(dataclasses.replace(spec, image_size=64)) != fingerprint(spec)
    assert fingerprint(dataclasses.replace(spec, test_uri="")) != fingerprint(spec)


def test_string_ids_are_read_by_id_whatever_the_files_string_type(tmp_path):
    split = tmp_path / "features" / "split=pool"
    split.mkdir(parents=True)
    ids = pa.array([f"s3://b/img{i}.jpg" for i in range(20)], pa.large_string())
    pq.write_table(pa.table({"id": ids, "features": fixed_list(np.arange(40, dtype=np.float32).reshape(20, 2))}),
                   split / "0.parquet")
    found = labeled_features(str(tmp_path / "features"), ["s3://b/img3.jpg", "s3://b/img11.jpg"])
    assert found.column("id").to_pylist() == ["s3://b/img3.jpg", "s3://b/img11.jpg"]
    assert matrix(found.column("features")).tolist() == [[6.0, 7.0], [22.0, 23.0]]
