"""What a run computes once and every round reuses: the self-supervised encoder and its features.

`RunFeatures` holds, for one run directory:
* `encoder_state`: the pre-trained encoder's weights (train.mode=pretrain: SSL once on the whole pool, saved
  at RUN_DIR/pretrain/model.pt; train.mode=frozen, or train.checkpoint: the given checkpoint);
* `pool_features`: RUN_DIR/pool_features, the whole pool embedded once by that encoder, for al.initial and
  select.features=pretrained (`pool_uri` once computed);
* `frozen_features`: RUN_DIR/frozen_features, the pool's and the test split's encoder features of a run whose
  rounds train only the head, so the per-round backend runs only the head per round.
Each is computed at most once per run (a marker file says it is done) and found again after a resume.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ray_al.core import storage
from ray_al.core.config import Config, ConfigError
from ray_al.data.pool import PoolSpec
from ray_al.loop import selection
from ray_al.loop.backend import train_seed
from ray_al.run.rundir import RunDir

def wants_pool_features(cfg: Config) -> bool:
    """Whether selection reads the self-supervised features of the whole pool."""
    return cfg.al.initial != "random" or cfg.select.features == "pretrained"


class RunFeatures:
    """The run-level encoder state and feature caches of one run (module docstring)."""

    def __init__(self, cfg: Config, run: RunDir, pool: PoolSpec, log=print):
        self.cfg, self.run, self.pool, self.log = cfg, run, pool, log
        self.pool_uri = ""  # RUN_DIR/pool_features once computed

    def encoder_state(self) -> dict | None:
        """The weights rounds start from. joint: model.weights (None without: random init); frozen: a given
        checkpoint, else model.weights; finetune: train.checkpoint, else model.weights; pretrain: a given
        checkpoint, else SSL once on the whole pool (round-independent), from model.weights when given."""
        from ray_al.models.weights import state_from_bytes, state_to_bytes
        from ray_al.workers.train import TrainRequest, fit

        cfg = self.cfg
        if cfg.train.mode == "joint":
            return self.weights_state()
        if cfg.train.checkpoint or (cfg.train.mode == "frozen" and cfg.model.weights in ("", "none")):
            return self.checkpoint_state()
        if cfg.train.mode in ("frozen", "finetune"):
            return self.weights_state()
        uri = self.run.path("pretrain", "model.pt")
        if storage.exists(uri):
            return state_from_bytes(storage.read_bytes(uri))
        self.log(f"pre-training {cfg.train.method} on the whole pool ({cfg.train.pretrain_epochs} epochs)")
        request = TrainRequest(name="pretrain", labeled_ids=np.zeros(0, np.int64),
                               labeled_labels=np.zeros(0, np.int64), seed=train_seed(cfg, None),
                               epochs=cfg.train.pretrain_epochs, use_ce=False, use_ssl=True, desc="pretrain",
                               init_state=self.weights_state())
        out = fit(cfg, self.pool, request, storage_uri=self.run.path("ray_train"))
        storage.write_bytes_atomic(uri, state_to_bytes(out.state_dict))
        return out.state_dict

    def weights_state(self) -> dict | None:
        """model.weights loaded into this run's learner (ray_al.models.pretrained); None without weights."""
        from ray_al.models.weights import learner_kwargs, pretrained_learner_state

        if self.cfg.model.weights in ("", "none"):
            return None
        state, note = pretrained_learner_state(learner_kwargs(self.cfg, self.pool), self.cfg.model.weights,
                                               seed=train_seed(self.cfg, None))
        self.log(note or f"encoder initialised from model.weights={self.cfg.model.weights}")
        return state

    def checkpoint_state(self) -> dict:
        """train.checkpoint, checked against this run's model (another class count: its head is left out)."""
        from ray_al.models.weights import checkpoint_for, learner_kwargs, state_from_bytes

        uri = self.cfg.train.checkpoint
        if not uri or not storage.exists(uri):
            raise ConfigError(f"train.checkpoint='{uri}' not found: give a model.pt written by a pretrain run "
                              "(RUN_DIR/pretrain/model.pt).")
        state, note = checkpoint_for(state_from_bytes(storage.read_bytes(uri)), learner_kwargs(self.cfg, self.pool),
                                     f"train.checkpoint='{uri}'")
        if note:
            self.log(note)
        return state

    def pool_features(self, init_state: dict | None) -> str:
        """RUN_DIR/pool_features: the whole pool embedded once by the self-supervised encoder (the pretrain
        state, or train.checkpoint in a joint run), for al.initial and select.features=pretrained."""
        from ray_al.data.reader import pool_columns, read_split, tag_split
        from ray_al.models.weights import learner_kwargs, state_to_bytes
        from ray_al.workers.embed import embed_splits

        uri, done = self.run.path("pool_features"), self.run.path("pool_features.json")
        if not storage.exists(done) and self.cfg.data.embeddings:  # the user's own features, as they are
            from ray_al.data.user_embeddings import describe, write_round_splits

            write_round_splits(describe(self.cfg.data.embeddings), np.zeros(0, np.int64), uri)
            storage.write_json_atomic(done, {"seconds": 0.0, "source": self.cfg.data.embeddings})
        if not storage.exists(done):
            state = init_state if init_state is not None else self.checkpoint_state()
            started = time.perf_counter()
            options = dataclasses.replace(selection.embed_options(self.cfg), committee_size=0)
            embed_splits(tag_split(read_split(self.pool.pool_uri, columns=pool_columns(self.pool)), "unlabeled"),
                         state_to_bytes(state), learner_kwargs(self.cfg, self.pool), self.pool, options, uri)
            storage.write_json_atomic(done, {"seconds": time.perf_counter() - started})
        self.pool_uri = uri
        return uri

    def frozen_features(self, state: dict) -> tuple[str, str]:
        """(RUN_DIR/frozen_features, its encoder digest): the pool's and the test split's features by the
        encoder of a run whose rounds train only the head, computed once and recomputed only for another
        encoder (the per-round path's counterpart of a resident group's kept features)."""
        from ray_al.data.reader import frozen_input
        from ray_al.models.weights import encoder_digest, learner_kwargs, state_to_bytes
        from ray_al.workers.embed import embed_splits

        uri, done = self.run.path("frozen_features"), self.run.path("frozen_features.json")
        options = dataclasses.replace(selection.embed_options(self.cfg), committee_size=0, features_only=True)
        digest = encoder_digest(state, options.dtype)
        if storage.exists(done) and storage.read_json(done).get("digest") == digest:
            return uri, digest
        started = time.perf_counter()
        embed_splits(frozen_input(self.pool), state_to_bytes(state), learner_kwargs(self.cfg, self.pool), self.pool,
                     options, uri)
        storage.write_json_atomic(done, {"seconds": time.perf_counter() - started, "digest": digest})
        self.log(f"encoder features of the pool and test split stored once for the run "
                 f"({time.perf_counter() - started:.1f} s); rounds run only the head")
        return uri, digest
