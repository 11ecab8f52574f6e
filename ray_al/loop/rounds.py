"""The active-learning round loop, and the only place that orders the stages.

Each round: train (Ray Train) -> embed + evaluate (Ray Data) -> select -> label (oracle) -> commit.
Every step writes its outputs, then a step marker; the round manifest is written last. A killed run
resumes at the first step without a marker, so no label is lost or duplicated. `on_round_committed(row)`
is called after each round's commit (the sweep reports rounds to Ray Tune through it).

    run, spec, cfg = open_run(cfg, run_uri, resume=False)
    Cycle(cfg, run, spec).run_all()
    finish(run)
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al.core import config as config_mod
from ray_al.core import faults, storage
from ray_al.loop import selection
from ray_al.acquisition.policy import AUTO
from ray_al.core.config import BudgetError, Config, ConfigError
from ray_al.data.pool import PoolError, PoolSpec, labelled_ids
from ray_al.run.ledger import Ledger
from ray_al.core.registry import Registry, UnknownNameError
from ray_al.workers.resident import RESIDENT
from ray_al.run.rundir import SEED_ROUND, RunDir, batch_name

__all__ = ["BudgetError", "Cycle", "check_budget", "check_config", "default_run_dir", "finish", "open_run",
           "train_seed"]

MODES = ("joint", "pretrain", "frozen")
ORACLES = ("simulated", "file")
COMMITTEES = ("mc_dropout", "heads")  # select.committee: MC-dropout passes | bagged linear heads
# train.seed_offset moves the training seeds by this much: far above seed * 1000 + round of any
# realistic al.seed, so offsets never reuse another run's seed, and small enough for torch's 64-bit seeds.
SEED_OFFSET_STRIDE = 1_000_000


def default_run_dir(cfg: Config, smoke: bool) -> str:
    name = f"{cfg.data.dataset}-{cfg.train.method}-{cfg.train.mode}-{cfg.select.method}-seed{cfg.al.seed}"
    return str(Path("runs") / (name + ("-smoke" if smoke else "")))


# ----------------------------------------------------------------------------- checks before any work
def check_config(cfg: Config) -> None:
    """Cheap checks before any work: names that exist, values in range."""
    from ray_al.models.trainloop import check_optimizer_names

    try:
        _check_names(cfg)
    except UnknownNameError as exc:  # a registry's message names the key and the valid names
        raise ConfigError(str(exc)) from None
    check_optimizer_names(cfg.train.optimizer, cfg.train.lr_schedule)
    if cfg.train.mode in ("pretrain", "frozen") and cfg.train.method == "none" and not cfg.train.checkpoint:
        raise ConfigError(f"train.mode={cfg.train.mode} needs an SSL train.method (e.g. simsiam) or train.checkpoint.")
    for key, value, valid in (("train.mode", cfg.train.mode, MODES), ("al.oracle", cfg.al.oracle, ORACLES),
                              ("data.on_corrupt", cfg.data.on_corrupt, ("skip", "error")),
                              ("embed.dtype", cfg.embed.dtype, ("float32", "bfloat16")),
                              ("select.committee", cfg.select.committee, COMMITTEES),
                              ("train.resident", cfg.train.resident, RESIDENT)):
        if value not in valid:
            raise ConfigError(f"{key}='{value}' is not valid; choose one of {', '.join(valid)}.")
    if cfg.select.committee_size < 2:
        raise ConfigError(f"select.committee_size must be >= 2 (a committee of one never disagrees), "
                          f"got {cfg.select.committee_size}.")
    for key in ("initial_size", "budget", "rounds"):
        if getattr(cfg.al, key) < (1 if key != "rounds" else 0):
            raise ConfigError(f"al.{key} must be positive, got {getattr(cfg.al, key)}.")
    if cfg.al.budgets and (len(cfg.al.budgets) != cfg.al.rounds or min(cfg.al.budgets) < 1):
        raise ConfigError(f"al.budgets={list(cfg.al.budgets)} must hold one positive batch size per round: "
                          f"al.rounds={cfg.al.rounds}, so give {cfg.al.rounds} sizes or set al.rounds="
                          f"{len(cfg.al.budgets)}.")
    _check_shards(cfg)


def _check_shards(cfg: Config) -> None:
    """select.shards spreads plain k-center only; for anything else it would be ignored without a word."""
    if cfg.select.shards < 1:
        raise ConfigError(f"select.shards must be >= 1, got {cfg.select.shards}.")
    one_process = [f"select.method={cfg.select.method}"] if cfg.select.method != "kcenter" else []
    one_process += ["select.prefilter"] * bool(cfg.select.prefilter) + ["select.zero_shot"] * cfg.select.zero_shot
    if cfg.select.shards > 1 and one_process:
        raise ConfigError(f"select.shards={cfg.select.shards} spreads plain k-center over Ray actors, but "
                          f"{' with '.join(one_process)} runs in one process: set select.method=kcenter (no "
                          "pre-filter, no zero-shot) to shard, or select.shards=1.")


def _check_names(cfg: Config) -> None:
    from ray_al import acquisition, ssl
    from ray_al.models import BACKBONES

    if cfg.train.method != "none":
        ssl.METHODS.get(cfg.train.method)
    BACKBONES.get(cfg.model.backbone)
    _check_fallback(cfg)
    _check_features(cfg)
    if cfg.select.method == AUTO:
        if cfg.select.prefilter:
            raise ConfigError("select.method=auto picks its own methods and takes no select.prefilter; clear it.")
        return
    strategy = acquisition.get(cfg.select.method)
    if cfg.select.prefilter:
        # a pre-filter ranks by a score: the registry of score-based strategies names the right key
        scores: Registry = Registry("score-based acquisition method", "select.prefilter")
        for name, s in acquisition.ACQUISITIONS.items():
            if s.kind == "score":
                scores.add(name, s)
        scores.get(cfg.select.prefilter)
        if "prefilter" not in strategy.options:
            raise ConfigError(f"select.method={cfg.select.method} takes no pre-filter; clear select.prefilter or "
                              "use a diversity method such as kcenter or badge.")


INITIAL_METHODS = ("random", "typiclust", "probcover", "kcenter")
FEATURES = ("model", "pretrained")


def _check_features(cfg: Config) -> None:
    """al.initial and select.features=pretrained select on a self-supervised encoder's features."""
    if cfg.al.initial not in INITIAL_METHODS:
        raise ConfigError(f"al.initial='{cfg.al.initial}' is not valid; choose one of {', '.join(INITIAL_METHODS)}.")
    if cfg.select.features not in FEATURES:
        raise ConfigError(f"select.features='{cfg.select.features}' is not valid; choose one of {', '.join(FEATURES)}.")
    wants = [f"al.initial={cfg.al.initial}"] if cfg.al.initial != "random" else []
    wants += ["select.features=pretrained"] if cfg.select.features == "pretrained" else []
    if not wants:
        return
    if cfg.train.mode == "joint" and not cfg.train.checkpoint:  # joint + a checkpoint: features from it
        raise ConfigError(f"{' and '.join(wants)} select(s) on self-supervised features, which a joint run does "
                          "not have before its first round: set train.mode=pretrain (SSL once on the pool) or "
                          "train.checkpoint=RUN_DIR/pretrain/model.pt of an earlier pretrain run.")
    if cfg.select.features == "pretrained" and cfg.select.shards > 1:
        raise ConfigError("select.features=pretrained runs in one process: set select.shards=1.")


def _check_fallback(cfg: Config) -> None:
    from ray_al import acquisition

    methods: Registry = Registry("acquisition method", "select.fallback")  # its error names this key
    for name, strategy in acquisition.ACQUISITIONS.items():
        methods.add(name, strategy)
    fallback = methods.get(cfg.select.fallback)
    if "labeled_labels" in fallback.required:  # the one way a method is not ready yet (weibull)
        raise ConfigError(f"select.fallback={cfg.select.fallback} cannot stand in for a method that cannot run "
                          "yet: choose one that needs no labels per class, e.g. typiclust or random.")


def check_budget(cfg: Config, pool_rows: int) -> None:
    queried = [config_mod.round_budget(cfg, r) for r in range(cfg.al.rounds)]
    needed = cfg.al.initial_size + sum(queried)
    if needed > pool_rows:
        plan = (f"al.budgets={list(cfg.al.budgets)}" if cfg.al.budgets
                else f"al.rounds={cfg.al.rounds} x al.budget={cfg.al.budget}")
        raise BudgetError(
            f"the labelling plan needs {needed} labels (al.initial_size={cfg.al.initial_size} + {plan}) but the "
            f"pool has only {pool_rows} images. Lower al.budget(s) or al.rounds, or use a larger pool "
            "(data.pool_size=0 takes all of it)."
        )


def train_seed(cfg: Config, r: int | None) -> int:
    """Seed of round r's training (r=None: the pre-training). With train.seed_offset=0 it is
    al.seed * 1000 + r (al.seed for the pre-training); an offset varies the training alone, while the seed
    set keeps al.seed."""
    base = cfg.al.seed if r is None else cfg.al.seed * 1000 + r
    return base + cfg.train.seed_offset * SEED_OFFSET_STRIDE


# ----------------------------------------------------------------------------- the rounds
class Cycle:
    def __init__(self, cfg: Config, run: RunDir, spec: PoolSpec, log=print,
                 on_round_committed: Callable[[dict], None] | None = None):
        self.cfg, self.run, self.spec, self.log = cfg, run, spec, log
        self.on_round_committed = on_round_committed
        self.seed = cfg.al.seed
        self.features_uri = ""  # RUN_DIR/pool_features once computed (al.initial, select.features=pretrained)
        self._oracle = None
        self._group = None  # the resident worker group (ray_al.workers.resident), once a round needs it

    def ledger(self) -> Ledger:
        return Ledger.load(self.run.uri, id_type=self.spec.id_type)

    def oracle(self):
        from ray_al.run.oracle import PoolOracle

        if self._oracle is None:
            self._oracle = PoolOracle(self.spec.pool_uri)
        return self._oracle

    def _model_uri(self, r: int) -> str:
        return self.run.round_uri(r, "model.pt")

    # ----------------------------------------------------------------- steps
    def initial_set(self) -> bool:
        """The seed set, in the ledger as round 0; False while a file oracle has yet to label it.

        al.initial=random: seeded, drawn among the pool rows whose `label` is known (null = unlabeled), so a
        real pool needs only its seed labels filled in. Any other al.initial picks on the self-supervised
        features; with al.oracle=file among every pool row, as the first query batch (`seed_batch`)."""
        ledger = self.ledger()
        if len(ledger):
            return True
        if self.cfg.al.initial != "random" and self.cfg.al.oracle == "file":
            return self.seed_batch()
        if not self.spec.has_labels:
            raise ConfigError(
                "the pool has no `label` column, so there is no seed set to start from: add a `label` column "
                f"holding the labels you already have (null elsewhere), at least al.initial_size="
                f"{self.cfg.al.initial_size} of them, and use al.oracle=file for the rest.")
        known = labelled_ids(self.spec.pool_uri)
        if len(known) < self.cfg.al.initial_size:
            raise BudgetError(f"al.initial_size={self.cfg.al.initial_size} but only {len(known)} pool rows have a "
                              "label; lower al.initial_size or label more seed images.")
        if self.cfg.al.initial == "random":
            rng = np.random.default_rng(self.seed)
            at = np.sort(rng.choice(len(known), self.cfg.al.initial_size, replace=False))
            chosen = known.take(pa.array(at)).to_numpy(zero_copy_only=False)
        else:
            chosen = selection.seed_set(self.cfg, self.features_uri, known, self.seed)
            self.log(f"seed set: {len(chosen)} images by {self.cfg.al.initial} on the self-supervised features")
        labels = self.oracle().answer(chosen)
        ledger.add(chosen, labels, 0, "initial", num_classes=self.spec.num_classes).commit(self.run.uri)
        return True

    def seed_batch(self) -> bool:
        """al.initial's pick among all pool rows, written as the seed query batch for annotators; the run
        stops until `python -m ray_al.label import` commits the answers as ledger round 0."""
        from ray_al.run.oracle import query_uris

        if not self.run.is_done(SEED_ROUND, "select"):
            chosen = selection.seed_set(self.cfg, self.features_uri, None, self.seed)
            self.run.write_queries(SEED_ROUND, chosen, query_uris(self.spec.pool_uri, self.spec.image_column, chosen))
            self.run.mark_done(SEED_ROUND, "select", {"k": len(chosen), "selected_by": self.cfg.al.initial})
        self._ask_for_labels(SEED_ROUND, self.run.step_payload(SEED_ROUND, "select")["k"])
        return False

    def pretrained_state(self) -> dict | None:
        """pretrain: SSL once on the whole pool (round-independent); frozen: a given checkpoint."""
        from ray_al.models.weights import state_from_bytes, state_to_bytes
        from ray_al.workers.train import fit

        cfg = self.cfg
        if cfg.train.mode == "joint":
            return None
        if cfg.train.mode == "frozen" or cfg.train.checkpoint:
            return self.checkpoint_state()
        uri = self.run.path("pretrain", "model.pt")
        if storage.exists(uri):
            return state_from_bytes(storage.read_bytes(uri))
        self.log(f"pre-training {cfg.train.method} on the whole pool ({cfg.train.pretrain_epochs} epochs)")
        out = fit(cfg, self.spec, labeled_ids=np.zeros(0, np.int64), labeled_labels=np.zeros(0, np.int64),
                  storage_uri=self.run.path("ray_train"), name="pretrain", seed=train_seed(cfg, None),
                  epochs=cfg.train.pretrain_epochs, use_ce=False, use_ssl=True, desc="pretrain")
        storage.write_bytes_atomic(uri, state_to_bytes(out.state_dict))
        return out.state_dict

    def checkpoint_state(self) -> dict:
        """train.checkpoint, checked against this run's model (another class count: its head is left out)."""
        from ray_al.models.weights import checkpoint_for, learner_kwargs, state_from_bytes

        uri = self.cfg.train.checkpoint
        if not uri or not storage.exists(uri):
            raise ConfigError(f"train.checkpoint='{uri}' not found: give a model.pt written by a pretrain run "
                              "(RUN_DIR/pretrain/model.pt).")
        state, note = checkpoint_for(state_from_bytes(storage.read_bytes(uri)), learner_kwargs(self.cfg, self.spec),
                                     f"train.checkpoint='{uri}'")
        if note:
            self.log(note)
        return state

    def pool_features(self, init_state: dict | None) -> str:
        """RUN_DIR/pool_features: the whole pool embedded once by the self-supervised encoder (the pretrain
        state, or train.checkpoint in a joint run), for al.initial and select.features=pretrained."""
        from ray_al.data.reader import pool_columns, read_split, tag_split
        from ray_al.workers.embed import embed_splits
        from ray_al.models.weights import learner_kwargs, state_to_bytes

        uri, done = self.run.path("pool_features"), self.run.path("pool_features.json")
        if storage.exists(done):
            return uri
        state = init_state if init_state is not None else self.checkpoint_state()
        started = time.perf_counter()
        options = dataclasses.replace(selection.embed_options(self.cfg), committee_size=0)
        embed_splits(tag_split(read_split(self.spec.pool_uri, columns=pool_columns(self.spec)), "unlabeled"),
                     state_to_bytes(state), learner_kwargs(self.cfg, self.spec), self.spec, options, uri)
        storage.write_json_atomic(done, {"seconds": time.perf_counter() - started})
        return uri

    def frozen_features(self, state: dict) -> tuple[str, str]:
        """(RUN_DIR/frozen_features, its encoder digest): the pool's and the test split's features by the
        encoder of a run whose rounds train only the head, computed once and recomputed only for another
        encoder (the per-round path's counterpart of a resident group's kept features)."""
        from ray_al.data.reader import frozen_input
        from ray_al.workers.embed import embed_splits
        from ray_al.models.weights import encoder_digest, learner_kwargs, state_to_bytes

        uri, done = self.run.path("frozen_features"), self.run.path("frozen_features.json")
        options = dataclasses.replace(selection.embed_options(self.cfg), committee_size=0, features_only=True)
        digest = encoder_digest(state, options.dtype)
        if storage.exists(done) and storage.read_json(done).get("digest") == digest:
            return uri, digest
        started = time.perf_counter()
        embed_splits(frozen_input(self.spec), state_to_bytes(state), learner_kwargs(self.cfg, self.spec), self.spec,
                     options, uri)
        storage.write_json_atomic(done, {"seconds": time.perf_counter() - started, "digest": digest})
        self.log(f"encoder features of the pool and test split stored once for the run "
                 f"({time.perf_counter() - started:.1f} s); rounds run only the head")
        return uri, digest

    def train(self, r: int, ledger: Ledger, init_state: dict | None) -> dict:
        from ray_al.models.weights import state_from_bytes, state_to_bytes
        from ray_al.workers.train import fit

        if self.run.is_done(r, "train"):
            return state_from_bytes(storage.read_bytes(self._model_uri(r)))
        cfg = self.cfg
        joint = cfg.train.mode == "joint"
        known = ledger.in_class()  # "none of these classes" answers count in the budget, not in training
        run = dict(labeled_ids=known.ids, labeled_labels=known.labels, seed=train_seed(cfg, r),
                   epochs=cfg.train.epochs, use_ce=True, use_ssl=joint and cfg.train.method != "none",
                   head_only=_head_only(cfg), init_state=init_state, desc=f"train round {r}")
        group = self.resident_group()
        if group is not None:
            out = group.train(f"round_{r:04d}", **run)
        else:
            out = fit(cfg, self.spec, storage_uri=self.run.path("ray_train"), name=f"round_{r:04d}", **run)
        storage.write_bytes_atomic(self._model_uri(r), state_to_bytes(out.state_dict))
        self.run.mark_done(r, "train", {"seconds": out.seconds, "metrics": out.metrics, "labels": len(ledger)})
        return out.state_dict

    def resident_group(self):
        """The worker group that serves every round (train.resident), started on first use; None when
        rounds run a fit and an embedding actor pool each."""
        from ray_al.workers import resident

        if self._group is None and resident.wanted(self.cfg, self.spec):
            self._group = resident.ResidentGroup(self.cfg, self.spec, self.run.path("ray_train"))
        return self._group

    def close(self) -> None:
        """Stop the resident group, if one was started."""
        if self._group is not None:
            self._group.close()
            self._group = None

    def embed(self, r: int, ledger: Ledger, state: dict) -> dict:
        """Embed the unlabeled, labeled and test splits; the test split gives the round's accuracy."""
        from ray_al.data.reader import embedding_input, features_input
        from ray_al.workers.embed import embed_heads, embed_splits
        from ray_al.models.weights import learner_kwargs, state_to_bytes

        if self.run.is_done(r, "embed"):
            return self.run.step_payload(r, "embed")
        spec = self.spec
        started = time.perf_counter()
        out_uri = self.run.round_uri(r, "embeddings")
        weights, kwargs, options = state_to_bytes(state), learner_kwargs(self.cfg, spec), selection.embed_options(self.cfg)
        group = self.resident_group()
        if group is not None:
            group.embed(weights, kwargs, options, out_uri, ledger.ids, keep_features=_head_only(self.cfg))
        elif _head_only(self.cfg):  # the encoder's features, computed once for the run; the head per round
            features_uri, digest = self.frozen_features(state)
            embed_heads(features_input(features_uri, ledger.ids), weights, kwargs,
                        dataclasses.replace(options, gpus_per_actor=0.0), out_uri, digest)
        else:
            embed_splits(embedding_input(spec, ledger.ids), weights, kwargs, spec, options, out_uri)
        faults.kill_point("embed.written")
        payload = {"seconds": time.perf_counter() - started, **_evaluate(out_uri)}
        if payload["corrupt"]:
            bad = payload["corrupt_ids"]
            self.log(f"round {r}: {payload['corrupt']} pool images could not be decoded and are left out "
                     f"(ids: {bad[:10]}{' ...' if len(bad) > 10 else ''})")
        self.run.mark_done(r, "embed", payload)
        return payload

    def select(self, r: int, ledger: Ledger) -> list:
        from ray_al.run.oracle import query_uris

        if self.run.is_done(r, "select"):
            return self.run.read_queries(r).column("id").to_pylist()
        started = time.perf_counter()
        k = config_mod.round_budget(self.cfg, r)
        chosen = selection.select_ids(self.cfg, self.run.round_uri(r, "embeddings"), ledger, k, r,
                                      zero_shot_uri=self.run.path("zero_shot_order.parquet"),
                                      features_uri=self.features_uri)
        ids = chosen.ids
        self.run.write_queries(r, ids, query_uris(self.spec.pool_uri, self.spec.image_column, ids))
        faults.kill_point("select.written")
        self.run.mark_done(r, "select", {"seconds": time.perf_counter() - started, "k": k,
                                         "selected_by": chosen.method, "why": chosen.why})
        return list(ids)

    def label(self, r: int, ids: list, ledger: Ledger) -> Ledger | None:
        """Simulated: answer now. File: stop and wait for `python -m ray_al.label import`."""
        if self.run.is_done(r, "label"):
            return self.ledger()
        already = ledger.table.filter(pc.equal(ledger.table.column("round"), r + 1))
        if already.num_rows:  # killed between the ledger commit and the step marker
            self.run.mark_done(r, "label", {"seconds": 0.0, "labels": already.num_rows, "recovered": True})
            return ledger
        if self.cfg.al.oracle == "file":
            return None
        started = time.perf_counter()
        labels = self.oracle().answer(ids)
        # ledger round r + 1: the first training round that uses these labels
        new = ledger.add(ids, labels, r + 1, "query", num_classes=self.spec.num_classes).commit(self.run.uri)
        faults.kill_point("label.committed")
        self.run.mark_done(r, "label", {"seconds": time.perf_counter() - started, "labels": len(ids)})
        return new

    # ----------------------------------------------------------------- the loop
    def run_all(self) -> list[dict]:
        """Every round not committed yet; stops early while a file oracle's labels are pending."""
        init_state = self.pretrained_state()
        if self.cfg.al.initial != "random" or self.cfg.select.features == "pretrained":
            self.features_uri = self.pool_features(init_state)
        if not self.initial_set():
            self.close()
            return self.run.results()
        printed = False
        try:
            for r in range(self.cfg.al.rounds + 1):
                if self.run.is_round_committed(r):
                    continue
                row = self.run_round(r, init_state)
                if row is None:
                    break
                self._log_row(row, header=not printed)
                printed = True
        finally:
            self.close()
        return self.run.results()

    def run_round(self, r: int, init_state: dict | None) -> dict | None:
        """Round r's steps, then its commit; None while its queries await a file oracle's labels."""
        ledger = self.ledger().up_to_round(r)
        state = self.train(r, ledger, init_state)
        faults.kill_point("train.done")
        embedded = self.embed(r, ledger, state)
        faults.kill_point("embed.done")
        seconds = {"train": self.run.step_payload(r, "train")["seconds"], "embed": embedded["seconds"]}
        if r < self.cfg.al.rounds:
            ids = self.select(r, ledger)
            faults.kill_point("select.done")
            chosen = self.run.step_payload(r, "select")
            seconds["select"] = chosen["seconds"]
            if self.label(r, ids, self.ledger()) is None:
                self._ask_for_labels(r, len(ids))
                return None
            faults.kill_point("label.done")
            seconds["label"] = self.run.step_payload(r, "label").get("seconds", 0.0)  # an import has no timing
        cfg = self.cfg
        row = {"round": r, "labels": len(ledger), "accuracy": embedded["accuracy"], "seconds": seconds,
               "method": cfg.train.method, "mode": cfg.train.mode, "select": cfg.select.method,
               "budget": cfg.al.budget, "seed": cfg.al.seed, "dataset": cfg.data.dataset,
               "corrupt": embedded["corrupt"]}
        if r < cfg.al.rounds:  # the last round trains and evaluates only
            row.update(selected_by=chosen.get("selected_by", cfg.select.method), why=chosen.get("why", ""))
        self.run.commit_round(r, row)
        faults.kill_point("round.committed")
        if self.on_round_committed is not None:
            self.on_round_committed(row)
        return row

    def _ask_for_labels(self, r: int, n: int) -> None:
        self.log(f"\n{batch_name(r)}: {n} images await labels. Export them with\n"
                 f"  python -m ray_al.label export {self.run.uri} --out queries.csv\n"
                 f"then import the answers and continue with\n"
                 f"  python -m ray_al.label import {self.run.uri} labels.csv\n"
                 f"  python -m ray_al.cycle --resume {self.run.uri}")

    def _log_row(self, row: dict, header: bool) -> None:
        from ray_al.core.report import format_table

        if header:
            self.log(format_table([]).split("\n")[0])
        self.log(format_table([row]).split("\n")[-1])


def _head_only(cfg: Config) -> bool:
    """Rounds train only the head: the encoder stays as pre-trained (or given) for the whole run."""
    return cfg.train.mode != "joint" and not cfg.train.finetune


def _evaluate(out_uri: str) -> dict:
    """Test accuracy over the decodable test images, and the pool ids that could not be decoded."""
    from ray_al.core.embeddings import drop_corrupt, matrix, read_embeddings

    test = read_embeddings(out_uri, "test", columns=["probs", "label", "corrupt"])
    if test.num_rows == 0:
        raise PoolError("the test split produced no rows to evaluate; check data.test.")
    rows = test.num_rows
    test = drop_corrupt(test)
    accuracy = float((matrix(test.column("probs")).argmax(axis=1) == test.column("label").to_numpy()).mean())
    bad: list = []
    for split in ("unlabeled", "labeled"):
        t = read_embeddings(out_uri, split, columns=["id", "corrupt"])
        if t.num_rows:
            bad += t.filter(t.column("corrupt")).column("id").to_pylist()
    return {"accuracy": accuracy, "corrupt_ids": bad[:1000], "corrupt": len(bad), "test_rows": rows}


# ----------------------------------------------------------------------------- opening and closing a run
def finish(run: RunDir, log=print) -> list[dict]:
    """results.jsonl and the learning-curve plot from the committed rounds; prints the table."""
    from ray_al.core.report import area_under_curve, format_table, learning_curve_png

    rows = run.results()
    run.write_results_jsonl()
    if not rows:
        return rows
    title = f"{rows[0]['dataset']}: {rows[0]['method']} ({rows[0]['mode']}) + {rows[0]['select']}"
    # drawn in memory: concurrent runs (sweep trials on one node) share no local file
    storage.write_bytes_atomic(storage.join(run.uri, "learning_curve.png"),
                               learning_curve_png(rows, title, group_by=("select",)))
    log("\n" + format_table(rows))
    auc = area_under_curve([r["labels"] for r in rows], [r["accuracy"] for r in rows])
    log(f"\narea under the learning curve: {auc:.4f}")
    log(f"results: {storage.join(run.uri, 'results.jsonl')}\nplot:    {storage.join(run.uri, 'learning_curve.png')}\n"
        f"ledger:  {storage.join(run.uri, 'ledger')} (python -m ray_al.label status {run.uri})")
    return rows


def _same_config(saved: dict | None, snapshot: dict) -> bool:
    if saved is None:
        return False
    try:  # track.* only says where to log: adding it to a stopped or finished run logs that run
        return config_mod.from_dict(saved).to_dict() | {"track": None} == snapshot | {"track": None}
    except ConfigError:  # a key this version no longer knows
        return False


def open_run(cfg: Config, run_uri: str, resume: bool) -> tuple[RunDir, PoolSpec, Config]:
    """(run directory, pool spec, config): a resumed run keeps its saved config; a new run with the
    config of an existing one carries on where it stopped; otherwise the pool is prepared afresh."""
    if resume:
        run = RunDir.open(run_uri)
        cfg = config_mod.from_dict(run.info["config"])
        storage.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
        return run, PoolSpec.from_dict(run.info["pool"]["spec"]), cfg
    from ray_al.data.pool import prepare

    storage.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
    snapshot = cfg.to_dict()
    info_path = storage.join(run_uri, "run.json")
    if storage.exists(info_path) and not cfg.run.overwrite:
        existing = storage.read_json(info_path)
        # read through from_dict, so a run saved before a key was added (with its default) still matches
        if _same_config(existing.get("config"), snapshot):
            return RunDir.open(run_uri), PoolSpec.from_dict(existing["pool"]["spec"]), cfg
    if cfg.run.overwrite and storage.exists(run_uri):
        storage.remove_tree(run_uri)
    spec = prepare(cfg.data, run_uri, cfg.data.subsample_seed if cfg.data.subsample_seed >= 0 else cfg.al.seed)
    check_budget(cfg, spec.pool_rows)
    info = {"config": snapshot, "num_classes": spec.num_classes, "class_names": list(spec.class_names),
            "id_type": spec.id_type,
            "pool": {"uri": spec.pool_uri, "id_column": "id", "image_column": spec.image_column,
                     "path_column": "path", "spec": spec.to_dict()}}
    return RunDir.create(run_uri, info, overwrite=cfg.run.overwrite), spec, cfg
