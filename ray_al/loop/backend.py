"""How a run's rounds are trained and embedded: one small interface, chosen once per run (`open_backend`).

    backend = open_backend(cfg, run, pool, features)  # train.resident and the pool's size decide
    outcome = backend.train(request)                  # a TrainRequest -> TrainOutcome (weights, metrics)
    backend.embed(state, labeled_ids, out_uri)        # the round's embeddings (core/embeddings.py contract)
    backend.close()                                   # free what it holds (a worker group)

* `PerRoundBackend`: a Ray Train fit per round (ray_al.workers.train.fit) and a Ray Data actor pool per
  embedding (ray_al.workers.embed); a run whose rounds train only the head embeds the encoder's features
  once (RunFeatures.frozen_features), fits the head on the labeled rows' stored features in this process
  (ray_al.models.headfit: no worker group, no image decoded) and runs only the head per embedding.
* `ResidentBackend`: one Ray Train worker group serves every round (ray_al.workers.resident).
* `EmbeddingsBackend`: selection-only rounds on the user's own embeddings (data.embeddings): nothing to
  train (`trains` is False), and a round's embeddings are the user's rows split by the ledger.
The first two give the same models and embeddings for the same request. A backend keeps no run state: the loop
(ray_al.loop.rounds) skips steps already done and writes the weights, step markers and results.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from ray_al.core.config import Config, head_only
from ray_al.data.pool import PoolSpec

if TYPE_CHECKING:
    from ray_al.loop.features import RunFeatures
    from ray_al.run.rundir import RunDir
    from ray_al.workers.train import TrainOutcome, TrainRequest

# train.seed_offset moves the training seeds by this much: far above seed * 1000 + round of any
# realistic al.seed, so offsets never reuse another run's seed, and small enough for torch's 64-bit seeds.
SEED_OFFSET_STRIDE = 1_000_000
# A frozen encoder's head is applied to the stored features in the driver up to this many pool rows (a
# stream of 1280-wide float32 rows: ~1.3 GB read a round at this size); larger pools use an actor pool, whose
# start cost ~13 s a round at 12,000 rows (configs/sweep_pretrained_cifar10.yaml, 2026-12-06).
LOCAL_HEAD_ROWS = 250_000


def train_seed(cfg: Config, r: int | None) -> int:
    """Seed of round r's training (r=None: the pre-training). With train.seed_offset=0 it is
    al.seed * 1000 + r (al.seed for the pre-training); an offset varies the training alone, while the seed
    set keeps al.seed."""
    base = cfg.al.seed if r is None else cfg.al.seed * 1000 + r
    return base + cfg.train.seed_offset * SEED_OFFSET_STRIDE


def apply_heads(cfg: Config, pool: PoolSpec, features_uri: str, labeled_ids, state: dict, options, out_uri: str,
                digest: str) -> None:
    """A round's embeddings from a frozen encoder's stored features (RunFeatures.frozen_features) and the
    round's head (`options`: embed_options' committee and normalisation): in this process for pools up to
    LOCAL_HEAD_ROWS rows, else in a Ray Data actor pool."""
    import dataclasses

    from ray_al.data.reader import features_input
    from ray_al.models.weights import learner_kwargs, state_to_bytes
    from ray_al.workers.embed import apply_heads_here, embed_heads

    weights, kwargs = state_to_bytes(state), learner_kwargs(cfg, pool)
    options = dataclasses.replace(options, gpus_per_actor=0.0)  # a linear head: no GPU actor is worth its start
    if pool.pool_rows <= LOCAL_HEAD_ROWS:
        apply_heads_here(features_uri, labeled_ids, weights, kwargs, options, out_uri, digest)
    else:
        embed_heads(features_input(features_uri, labeled_ids), weights, kwargs, options, out_uri, digest)


def labeled_features(features_uri: str, ids):
    """The decodable rows (`id`, `features`) of a frozen encoder's stored pool features whose id is in `ids`,
    in file order: data.lookup.rows_by_id, which reads only the row groups whose id statistics admit one."""
    from ray_al.core import storage
    from ray_al.core.embeddings import drop_corrupt
    from ray_al.data.lookup import rows_by_id
    from ray_al.data.reader import FROZEN_POOL

    split = storage.join(features_uri, f"split={FROZEN_POOL}")
    rows, _ = rows_by_id(split, ids, columns=["id", "features", "corrupt"])
    return drop_corrupt(rows).select(["id", "features"])


class Backend(ABC):
    """Trains and embeds the rounds of one run (module docstring)."""

    trains = True  # False: rounds have no model (selection only)

    @abstractmethod
    def train(self, request: TrainRequest) -> TrainOutcome:
        """The model of one request."""

    @abstractmethod
    def embed(self, state: dict, labeled_ids: np.ndarray, out_uri: str) -> None:
        """The unlabeled, labeled (by `labeled_ids`) and test splits embedded by `state` into out_uri."""

    def close(self) -> None:
        """Free what the backend holds; nothing by default."""


def open_backend(cfg: Config, run: RunDir, pool: PoolSpec, features: RunFeatures) -> Backend:
    """The run's backend: a resident group where train.resident wants one (ray_al.workers.resident.wanted)."""
    from ray_al.workers import resident

    if cfg.data.embeddings:
        return EmbeddingsBackend(pool)
    if resident.wanted(cfg, pool):
        return ResidentBackend(cfg, pool, run.path("ray_train"))
    return PerRoundBackend(cfg, pool, run.path("ray_train"), features)


class PerRoundBackend(Backend):
    """A fit and an embedding actor pool per round."""

    def __init__(self, cfg: Config, pool: PoolSpec, storage_uri: str, features: RunFeatures):
        self.cfg, self.pool, self.storage_uri, self.features = cfg, pool, storage_uri, features

    def train(self, request: TrainRequest) -> TrainOutcome:
        from ray_al.workers.train import fit

        if request.head_only and head_only(self.cfg) and request.fault_injection is None:
            return self.fit_head(request)
        return fit(self.cfg, self.pool, request, storage_uri=self.storage_uri)

    def fit_head(self, request: TrainRequest) -> TrainOutcome:
        """The head of a frozen encoder, trained on the labeled rows' stored features (ray_al.models.headfit);
        seconds include the one-off features when this is the run's first round."""
        import time

        import torch

        from ray_al.core.embeddings import matrix
        from ray_al.models.headfit import fit_linear_head
        from ray_al.models.weights import build_learner, learner_kwargs
        from ray_al.workers.train import TrainOutcome

        started = time.perf_counter()
        features_uri, _ = self.features.frozen_features(request.init_state)
        rows = labeled_features(features_uri, request.labeled_ids).sort_by("id")  # as a Ray Train worker holds them
        labels_by_id = dict(zip(request.labeled_ids.tolist(), request.labeled_labels.tolist()))
        torch.manual_seed(request.seed)  # the head's initial weights, as a Ray Train fit draws them
        learner = build_learner(learner_kwargs(self.cfg, self.pool))
        learner.load_state_dict(request.init_state, strict=False)
        history = fit_linear_head(learner, matrix(rows.column("features")),
                                  np.asarray([labels_by_id[i] for i in rows.column("id").to_pylist()], np.int64),
                                  request.seed, request.epochs, self.cfg.train)
        metrics = {**history[-1], "start_epoch": 0, "images": rows.num_rows} if history else {}
        return TrainOutcome(state_dict=learner.state_dict(), metrics=metrics, seconds=time.perf_counter() - started,
                            history=history)

    def embed(self, state: dict, labeled_ids: np.ndarray, out_uri: str) -> None:
        from ray_al.data.reader import embedding_input
        from ray_al.loop.selection import embed_options
        from ray_al.models.weights import learner_kwargs, state_to_bytes
        from ray_al.workers.embed import embed_splits

        options = embed_options(self.cfg)
        if head_only(self.cfg):  # the encoder's features, computed once for the run; the head per round
            features_uri, digest = self.features.frozen_features(state)
            apply_heads(self.cfg, self.pool, features_uri, labeled_ids, state, options, out_uri, digest)
        else:
            embed_splits(embedding_input(self.pool, labeled_ids), state_to_bytes(state),
                         learner_kwargs(self.cfg, self.pool), self.pool, options, out_uri)


class ResidentBackend(Backend):
    """One worker group for every round; it starts on the first job and stops at `close`."""

    def __init__(self, cfg: Config, pool: PoolSpec, storage_uri: str):
        from ray_al.workers.resident import ResidentGroup

        self.cfg, self.pool = cfg, pool
        self.group = ResidentGroup(cfg, pool, storage_uri)

    def train(self, request: TrainRequest) -> TrainOutcome:
        return self.group.train(request)

    def embed(self, state: dict, labeled_ids: np.ndarray, out_uri: str) -> None:
        from ray_al.loop.selection import embed_options
        from ray_al.models.weights import learner_kwargs, state_to_bytes

        self.group.embed(state_to_bytes(state), learner_kwargs(self.cfg, self.pool), embed_options(self.cfg),
                         out_uri, labeled_ids, keep_features=head_only(self.cfg))

    def close(self) -> None:
        self.group.close()


class EmbeddingsBackend(Backend):
    """Selection-only rounds on a user's embeddings file (ray_al.data.user_embeddings): no model."""

    trains = False

    def __init__(self, pool: PoolSpec):
        from ray_al.data.user_embeddings import describe

        self.user = describe(pool.pool_uri)

    def train(self, request: TrainRequest) -> TrainOutcome:
        raise RuntimeError("data.embeddings runs select only: there is no model to train")

    def embed(self, state: dict | None, labeled_ids: np.ndarray, out_uri: str) -> None:
        import pyarrow as pa

        from ray_al.data.user_embeddings import write_round_splits

        write_round_splits(self.user, pa.array(np.asarray(labeled_ids)), out_uri)
