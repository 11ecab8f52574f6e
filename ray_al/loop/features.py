"""What a run computes once and every round reuses: the self-supervised encoder and its features.

`RunFeatures` holds, for one run directory:
* `encoder_state`: the pre-trained encoder's weights (train.mode=pretrain: SSL once on the whole pool, saved
  at RUN_DIR/pretrain/model.pt; train.mode=frozen, or train.checkpoint: the given checkpoint);
* `pool_features`: RUN_DIR/pool_features, the whole pool embedded once by that encoder, for al.initial and
  select.features=pretrained (`pool_uri` once computed);
* `frozen_features`: RUN_DIR/frozen_features (or a folder of embed.features_cache, shared by runs with the
  same encoder and pool), the pool's and the test split's encoder features of a run whose rounds train only
  the head, so the per-round backend runs only the head per round.
Each is computed at most once per run (a marker file says it is done) and found again after a resume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np

from ray_al.core import storage
from ray_al.core.config import Config, ConfigError, head_only
from ray_al.data.pool import PoolSpec
from ray_al.loop import selection
from ray_al.loop.backend import train_seed
from ray_al.run.rundir import RunDir

# Bump when what a stored feature row means changes (the crop, the columns): older cache folders stop matching.
FEATURES_FORMAT = 1


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
            if head_only(self.cfg):  # the rounds' frozen encoder: its stored features, only the head run
                self.pool_features_from_frozen(state, options, uri)
            else:
                embed_splits(tag_split(read_split(self.pool.pool_uri, columns=pool_columns(self.pool)), "unlabeled"),
                             state_to_bytes(state), learner_kwargs(self.cfg, self.pool), self.pool, options, uri)
            storage.write_json_atomic(done, {"seconds": time.perf_counter() - started})
        self.pool_uri = uri
        return uri

    def pool_features_from_frozen(self, state: dict, options, uri: str) -> None:
        """pool_features of a run whose encoder stays frozen: the stored encoder features (frozen_features,
        shared between runs) through the head, so the images are not embedded a second time."""
        from ray_al.loop.backend import apply_heads

        features_uri, digest = self.frozen_features(state)
        no_ids = np.zeros(0, np.int64) if self.pool.id_type == "int64" else np.zeros(0, dtype=str)
        apply_heads(self.cfg, self.pool, features_uri, no_ids, state, options, uri, digest)

    def frozen_features(self, state: dict) -> tuple[str, str]:
        """(where the pool's and the test split's encoder features are, its encoder digest) for a run whose
        rounds train only the head: RUN_DIR/frozen_features, or a folder of embed.features_cache that runs
        with the same encoder and pool share (a sweep's trials). Computed once; recomputed only for another
        encoder. RUN_DIR/frozen_features.json records where they are."""
        from ray_al.models.weights import encoder_digest

        options = dataclasses.replace(selection.embed_options(self.cfg), committee_size=0, features_only=True)
        digest = encoder_digest(state, options.dtype)
        done = self.run.path("frozen_features.json")
        stored = storage.read_json(done) if storage.exists(done) else {}
        if stored.get("digest") == digest:
            return stored.get("uri") or self.run.path("frozen_features"), digest
        started = time.perf_counter()
        if self.cfg.embed.features_cache:
            uri, shared = self.shared_features(state, digest, options)
        else:
            uri, shared = self.compute_features(state, options, self.run.path("frozen_features")), False
        seconds = time.perf_counter() - started
        storage.write_json_atomic(done, {"seconds": seconds, "digest": digest, "uri": uri, "shared": shared})
        where = "found in the shared cache" if shared else "stored once for the run"
        self.log(f"encoder features of the pool and test split {where} ({uri}, {seconds:.1f} s); rounds run "
                 "only the head")
        return uri, digest

    def shared_features(self, state: dict, digest: str, options) -> tuple[str, bool]:
        """(folder, found): the features in embed.features_cache under a key of the encoder and the pool
        (data.pool.fingerprint). The first run to finish publishes its folder by creating KEY.json; a run
        that finishes after it drops its own copy."""
        import uuid

        from ray_al.data.pool import fingerprint

        cache = self.cfg.embed.features_cache
        key = hashlib.sha256(f"{digest}|{fingerprint(self.pool)}|{FEATURES_FORMAT}".encode()).hexdigest()[:24]
        marker = storage.join(cache, f"{key}.json")
        if storage.exists(marker):
            return storage.join(cache, storage.read_json(marker)["folder"]), True
        folder = f"{key}-{uuid.uuid4().hex[:8]}"
        uri = self.compute_features(state, options, storage.join(cache, folder))
        if storage.create_exclusive(marker, json.dumps({"folder": folder, "digest": digest}).encode()):
            return uri, False
        storage.remove_tree(uri)  # another run published the same features first
        return storage.join(cache, storage.read_json(marker)["folder"]), True

    def compute_features(self, state: dict, options, uri: str) -> str:
        from ray_al.data.reader import frozen_input
        from ray_al.models.weights import learner_kwargs, state_to_bytes
        from ray_al.workers.embed import embed_splits

        return embed_splits(frozen_input(self.pool), state_to_bytes(state), learner_kwargs(self.cfg, self.pool),
                            self.pool, options, uri)
