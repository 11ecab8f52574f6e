"""`python -m ray_al.cycle`: the active-learning loop, and the only place that orders the stages.

Each round: train (Ray Train) -> embed + evaluate (Ray Data) -> select -> label (oracle) -> commit.
Every step writes its outputs, then a step marker; the round manifest is written last. A killed run
resumes (`--resume RUN_DIR`) at the first step without a marker, so no label is lost or duplicated.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al import config as config_mod
from ray_al import io
from ray_al.config import Config, ConfigError
from ray_al.data.pool import PoolError, PoolSpec
from ray_al.ledger import Ledger, LedgerError
from ray_al.rundir import RunDir, RunDirError

MODES = ("joint", "pretrain", "frozen")
ORACLES = ("simulated", "file")
COMMITTEES = ("mc_dropout", "heads")  # select.committee: MC-dropout passes | bagged linear heads


class BudgetError(ValueError):
    """The labelling budget does not fit in the pool."""


def default_run_dir(cfg: Config, smoke: bool) -> str:
    name = f"{cfg.data.dataset}-{cfg.train.method}-{cfg.train.mode}-{cfg.select.method}-seed{cfg.al.seed}"
    return str(Path("runs") / (name + ("-smoke" if smoke else "")))


def check_config(cfg: Config) -> None:
    """Cheap checks before any work: names that exist, budgets that fit."""
    from ray_al import acquisition, ssl
    from ray_al.models import BACKBONES
    from ray_al.trainloop import check_optimizer_names

    if cfg.train.mode not in MODES:
        raise ConfigError(f"train.mode='{cfg.train.mode}' is not valid; choose one of {', '.join(MODES)}.")
    check_optimizer_names(cfg.train.optimizer, cfg.train.lr_schedule)
    if cfg.train.method != "none" and cfg.train.method not in ssl.METHODS:
        raise ConfigError(f"train.method='{cfg.train.method}' is not known; valid: none, {', '.join(ssl.METHODS)}.")
    if cfg.train.mode in ("pretrain", "frozen") and cfg.train.method == "none" and not cfg.train.checkpoint:
        raise ConfigError(f"train.mode={cfg.train.mode} needs an SSL train.method (e.g. simsiam) or train.checkpoint.")
    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone='{cfg.model.backbone}' is not known; valid: {', '.join(BACKBONES)}.")
    acquisition.get(cfg.select.method)  # raises with the valid names
    if cfg.select.prefilter:
        acquisition.get(cfg.select.prefilter)
    if cfg.al.oracle not in ORACLES:
        raise ConfigError(f"al.oracle='{cfg.al.oracle}' is not valid; choose one of {', '.join(ORACLES)}.")
    if cfg.data.on_corrupt not in ("skip", "error"):
        raise ConfigError(f"data.on_corrupt='{cfg.data.on_corrupt}' must be skip or error.")
    if cfg.embed.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"embed.dtype='{cfg.embed.dtype}' must be float32 or bfloat16.")
    if cfg.select.committee not in COMMITTEES:
        raise ConfigError(f"select.committee='{cfg.select.committee}' is not valid; choose one of "
                          f"{', '.join(COMMITTEES)}.")
    if cfg.select.committee_size < 2:
        raise ConfigError(f"select.committee_size must be >= 2 (a committee of one never disagrees), "
                          f"got {cfg.select.committee_size}.")
    for key in ("initial_size", "budget", "rounds"):
        if getattr(cfg.al, key) < (1 if key != "rounds" else 0):
            raise ConfigError(f"al.{key} must be positive, got {getattr(cfg.al, key)}.")


def needs_committee(cfg: Config) -> bool:
    """Whether the selection method or its pre-filter scores committee disagreement."""
    from ray_al import acquisition

    return "committee_probs" in acquisition.needs(cfg.select.method, optional=False, prefilter=cfg.select.prefilter)


def embed_options(cfg: Config):
    """The embed step's EmbedOptions. MC-dropout passes are an embedding output, computed only when a
    committee method needs them; a heads committee is fitted at selection time instead."""
    from ray_al.embed import EmbedOptions

    committee = cfg.select.committee == "mc_dropout" and needs_committee(cfg)
    return EmbedOptions(
        batch_size=cfg.embed.batch_size, actors=cfg.embed.actors, cpus_per_actor=cfg.embed.cpus_per_actor,
        gpus_per_actor=cfg.embed.gpus_per_actor, dtype=cfg.embed.dtype,
        committee_size=cfg.select.committee_size if committee else 0, on_corrupt=cfg.data.on_corrupt,
        normalize=cfg.embed.normalize,
    )


def check_budget(cfg: Config, pool_rows: int) -> None:
    needed = cfg.al.initial_size + cfg.al.rounds * cfg.al.budget
    if needed > pool_rows:
        raise BudgetError(
            f"the labelling plan needs {needed} labels (al.initial_size={cfg.al.initial_size} + al.rounds="
            f"{cfg.al.rounds} x al.budget={cfg.al.budget}) but the pool has only {pool_rows} images. Lower "
            "al.budget or al.rounds, or use a larger pool (data.pool_size=0 takes all of it)."
        )


class Cycle:
    def __init__(self, cfg: Config, run: RunDir, spec: PoolSpec, log=print):
        self.cfg, self.run, self.spec, self.log = cfg, run, spec, log
        self.seed = cfg.al.seed

    # ----------------------------------------------------------------- helpers
    def ledger(self) -> Ledger:
        return Ledger.load(self.run.uri, id_type=self.spec.id_type)

    def oracle(self):
        from ray_al.data.pool import read_labels
        from ray_al.oracle import SimulatedOracle

        if not hasattr(self, "_oracle"):
            ids, labels = read_labels(self.spec.pool_uri)
            self._oracle = SimulatedOracle({i: int(y) for i, y in zip(ids, labels) if y is not None})
        return self._oracle

    def _model_uri(self, r: int) -> str:
        return self.run.round_uri(r, "model.pt")

    # ----------------------------------------------------------------- steps
    def initial_set(self) -> None:
        """A seeded random seed set. With al.oracle=file it is drawn among the pool rows whose `label` is
        already known (null = unlabeled), so a real pool needs only its seed labels filled in."""
        ledger = self.ledger()
        if len(ledger):
            return
        if not self.spec.has_labels:
            raise ConfigError(
                "the pool has no `label` column, so there is no seed set to start from: add a `label` column "
                f"holding the labels you already have (null elsewhere), at least al.initial_size="
                f"{self.cfg.al.initial_size} of them, and use al.oracle=file for the rest.")
        known = np.asarray(sorted(self.oracle().labels_by_id))
        if len(known) < self.cfg.al.initial_size:
            raise BudgetError(f"al.initial_size={self.cfg.al.initial_size} but only {len(known)} pool rows have a "
                              "label; lower al.initial_size or label more seed images.")
        rng = np.random.default_rng(self.seed)
        chosen = known[np.sort(rng.choice(len(known), self.cfg.al.initial_size, replace=False))]
        labels = self.oracle().answer(chosen)
        ledger.add(chosen, labels, 0, "initial", num_classes=self.spec.num_classes).commit(self.run.uri)

    def pretrained_state(self) -> dict | None:
        """pretrain: SSL once on the whole pool (round-independent); frozen: a given checkpoint."""
        from ray_al.train import fit, state_from_bytes, state_to_bytes

        cfg = self.cfg
        if cfg.train.mode == "joint":
            return None
        if cfg.train.mode == "frozen" or cfg.train.checkpoint:
            uri = cfg.train.checkpoint
            if not uri or not io.exists(uri):
                raise ConfigError(f"train.checkpoint='{uri}' not found: give a model.pt written by a pretrain run "
                                  "(RUN_DIR/pretrain/model.pt).")
            return state_from_bytes(io.read_bytes(uri))
        uri = self.run.path("pretrain", "model.pt")
        if io.exists(uri):
            return state_from_bytes(io.read_bytes(uri))
        self.log(f"pre-training {cfg.train.method} on the whole pool ({cfg.train.pretrain_epochs} epochs)")
        out = fit(cfg, self.spec, labeled_ids=np.zeros(0, np.int64), labeled_labels=np.zeros(0, np.int64),
                  storage_uri=self.run.path("ray_train"), name="pretrain", seed=self.seed,
                  epochs=cfg.train.pretrain_epochs, use_ce=False, use_ssl=True, desc="pretrain")
        io.write_bytes_atomic(uri, state_to_bytes(out.state_dict))
        return out.state_dict

    def train(self, r: int, ledger: Ledger, init_state: dict | None) -> dict:
        from ray_al.train import fit, state_from_bytes, state_to_bytes

        if self.run.is_done(r, "train"):
            return state_from_bytes(io.read_bytes(self._model_uri(r)))
        cfg = self.cfg
        joint = cfg.train.mode == "joint"
        out = fit(
            cfg, self.spec, labeled_ids=ledger.ids, labeled_labels=ledger.labels,
            storage_uri=self.run.path("ray_train"), name=f"round_{r:04d}", seed=self.seed * 1000 + r,
            epochs=cfg.train.epochs, use_ce=True, use_ssl=joint and cfg.train.method != "none",
            head_only=not joint and not cfg.train.finetune, init_state=init_state, desc=f"train round {r}",
        )
        io.write_bytes_atomic(self._model_uri(r), state_to_bytes(out.state_dict))
        self.run.mark_done(r, "train", {"seconds": out.seconds, "metrics": out.metrics, "labels": len(ledger)})
        return out.state_dict

    def embed(self, r: int, ledger: Ledger, state: dict) -> dict:
        from ray_al.data.reader import pool_columns, read_split
        from ray_al.embed import embed_splits, read_embeddings
        from ray_al.train import learner_kwargs, state_to_bytes

        if self.run.is_done(r, "embed"):
            return self.run.step_payload(r, "embed")
        cfg, spec = self.cfg, self.spec
        started = time.perf_counter()
        options = embed_options(cfg)
        datasets = {
            "unlabeled": read_split(spec.pool_uri, columns=pool_columns(spec), exclude_ids=ledger.ids),
            "labeled": read_split(spec.pool_uri, columns=pool_columns(spec), include_ids=ledger.ids),
            "test": read_split(spec.test_uri, columns=pool_columns(spec, with_label=True)),
        }
        out_uri = self.run.round_uri(r, "embeddings")
        embed_splits(datasets, state_to_bytes(state), learner_kwargs(self.cfg, spec), spec, options, out_uri)
        test = read_embeddings(out_uri, "test", columns=["probs", "label", "corrupt"])
        corrupt = {s: read_embeddings(out_uri, s, columns=["id", "corrupt"]) for s in ("unlabeled", "labeled")}
        bad_ids = [i for t in corrupt.values() if t.num_rows
                   for i, c in zip(t.column("id").to_pylist(), t.column("corrupt").to_pylist()) if c]
        accuracy = _accuracy(test)
        payload = {"seconds": time.perf_counter() - started, "accuracy": accuracy, "corrupt_ids": bad_ids[:1000],
                   "corrupt": len(bad_ids), "test_rows": test.num_rows}
        if bad_ids:
            self.log(f"round {r}: {len(bad_ids)} pool images could not be decoded and are left out "
                     f"(ids: {bad_ids[:10]}{' ...' if len(bad_ids) > 10 else ''})")
        self.run.mark_done(r, "embed", payload)
        return payload

    def select(self, r: int, ledger: Ledger) -> list:
        if self.run.is_done(r, "select"):
            return self.run.read_queries(r).column("id").to_pylist()
        started = time.perf_counter()
        emb_uri = self.run.round_uri(r, "embeddings")
        k = self.cfg.al.budget
        ids = self._select_ids(emb_uri, ledger, k, r)
        self.run.write_queries(r, ids, self._uris(ids))
        self.run.mark_done(r, "select", {"seconds": time.perf_counter() - started, "k": k})
        return list(ids)

    def _select_ids(self, emb_uri: str, ledger: Ledger, k: int, r: int) -> list:
        from ray_al import acquisition
        from ray_al.embed import matrix, read_embeddings, split_files

        cfg = self.cfg
        unl = read_embeddings(emb_uri, "unlabeled")
        if unl.num_rows and "corrupt" in unl.column_names:
            unl = unl.filter(pc.invert(unl.column("corrupt")))
        if k > unl.num_rows:
            raise BudgetError(f"round {r}: al.budget={k} is larger than the {unl.num_rows} unlabeled images left; "
                              "lower al.budget or al.rounds.")
        lab = read_embeddings(emb_uri, "labeled")
        lab_emb = matrix(lab.column("embedding")) if lab.num_rows else None
        if cfg.select.zero_shot:
            return self._zero_shot_prefix(unl, lab_emb, ledger, k)
        if cfg.select.method == "kcenter" and cfg.select.shards > 1 and not cfg.select.prefilter:
            from ray_al.select import kcenter_select_distributed

            chosen, _stats = kcenter_select_distributed(
                split_files(emb_uri, "unlabeled"), k, labeled_features=lab_emb, shards=cfg.select.shards,
                seed=self.seed + r, filesystem=io.pyarrow_fs(emb_uri)[0] if io.is_s3(emb_uri) else None,
            )
            return list(chosen)
        labels_by_id = ledger.labels_by_id()
        lab_ids = lab.column("id").to_pylist() if lab.num_rows else []
        probs, emb = matrix(unl.column("probs")), matrix(unl.column("embedding"))
        committee_probs = None
        if cfg.select.committee == "heads" and needs_committee(cfg):
            committee_probs = self._heads_committee(lab, labels_by_id, emb, probs.shape[1], r)
        elif "committee" in unl.column_names:
            committee_probs = (matrix(unl.column("committee")).reshape(unl.num_rows, cfg.select.committee_size, -1)
                               .transpose(1, 0, 2))
        view = acquisition.PoolView(
            ids=np.asarray(unl.column("id").to_pylist()),
            probs=probs,
            embeddings=emb,
            committee_probs=committee_probs,
            labeled_embeddings=lab_emb,
            labeled_labels=np.asarray([labels_by_id[i] for i in lab_ids], dtype=np.int64) if lab_ids else None,
            labeled_probs=matrix(lab.column("probs")) if lab.num_rows else None,
        )
        options = {}
        if cfg.select.prefilter:
            options = {"prefilter": cfg.select.prefilter, "prefilter_factor": cfg.select.prefilter_factor}
        positions = acquisition.select(cfg.select.method, view, k, seed=self.seed * 1000 + r, **options)
        return view.ids[positions].tolist()

    def _heads_committee(self, lab: pa.Table, labels_by_id: dict, emb: np.ndarray, n_classes: int,
                         r: int) -> np.ndarray:
        """select.committee=heads: (m, n, C) probabilities of linear heads bagged on the labeled embeddings."""
        from ray_al.acquisition.heads import heads_committee_probs
        from ray_al.embed import matrix

        if lab.num_rows and "corrupt" in lab.column_names:  # an undecodable image's features say nothing of its label
            lab = lab.filter(pc.invert(lab.column("corrupt")))
        ids = lab.column("id").to_pylist() if lab.num_rows else []
        return heads_committee_probs(
            matrix(lab.column("embedding")) if ids else np.zeros((0, emb.shape[1]), np.float32),
            np.asarray([labels_by_id[i] for i in ids], dtype=np.int64), emb, n_classes,
            size=self.cfg.select.committee_size, seed=self.seed * 1000 + r, labeled_ids=np.asarray(ids),
        )

    def _zero_shot_prefix(self, unl: pa.Table, lab_emb, ledger: Ledger, k: int) -> list:
        """Zero-shot AL: order the pool once by k-center on the first round's features (the seed set as
        centers) and save it; every round takes the next k ids of that order, so budgets are prefixes."""
        from ray_al.embed import matrix
        from ray_al.select import zero_shot_order

        uri = self.run.path("zero_shot_order.parquet")
        if not io.exists(uri):
            ids = np.asarray(unl.column("id").to_pylist())
            order = zero_shot_order(matrix(unl.column("embedding")), seed=self.seed, labeled_features=lab_emb)
            io.write_parquet_atomic(uri, pa.table({"id": pa.array(ids[order]), "rank": pa.array(np.arange(len(order)))}))
        ordered = io.read_parquet(uri).column("id").to_pylist()
        labeled = set(ledger.ids.tolist())
        return [i for i in ordered if i not in labeled][:k]

    def _uris(self, ids: list) -> list:
        if self.spec.image_column != "path":
            return [None] * len(ids)
        table = io.read_parquet(self.spec.pool_uri, columns=["id", "path"])
        by_id = dict(zip(table.column("id").to_pylist(), table.column("path").to_pylist()))
        return [by_id.get(i) for i in ids]

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
        new = ledger.add(ids, labels, r + 1, "query", num_classes=self.spec.num_classes).commit(self.run.uri)
        self.run.mark_done(r, "label", {"seconds": time.perf_counter() - started, "labels": len(ids)})
        return new

    # ----------------------------------------------------------------- the loop
    def run_all(self) -> list[dict]:
        from ray_al.report import format_table

        cfg = self.cfg
        self.initial_set()
        init_state = self.pretrained_state()
        header_printed = False
        for r in range(cfg.al.rounds + 1):
            if self.run.is_round_committed(r):
                continue
            ledger = self.ledger().up_to_round(r)
            state = self.train(r, ledger, init_state)
            embedded = self.embed(r, ledger, state)
            seconds = {"train": self.run.step_payload(r, "train")["seconds"], "embed": embedded["seconds"]}
            if r < cfg.al.rounds:
                ids = self.select(r, ledger)
                seconds["select"] = self.run.step_payload(r, "select")["seconds"]
                if self.label(r, ids, self.ledger()) is None:
                    self.log(f"\nround {r}: {len(ids)} images await labels. Export them with\n"
                             f"  python -m ray_al.label export {self.run.uri} --out queries.csv\n"
                             f"then import the answers and continue with\n"
                             f"  python -m ray_al.label import {self.run.uri} labels.csv\n"
                             f"  python -m ray_al.cycle --resume {self.run.uri}")
                    return self.run.results()
                seconds["label"] = self.run.step_payload(r, "label").get("seconds", 0.0)  # an import has no timing
            row = {"round": r, "labels": len(ledger), "accuracy": embedded["accuracy"], "seconds": seconds,
                   "method": cfg.train.method, "mode": cfg.train.mode, "select": cfg.select.method,
                   "budget": cfg.al.budget, "seed": cfg.al.seed, "dataset": cfg.data.dataset,
                   "corrupt": embedded["corrupt"]}
            self.run.commit_round(r, row)
            if not header_printed:
                self.log(format_table([]).split("\n")[0])
                header_printed = True
            self.log(format_table([row]).split("\n")[-1])
        return self.run.results()


def _accuracy(test: pa.Table) -> float:
    from ray_al.embed import matrix

    if test.num_rows == 0:
        raise PoolError("the test split produced no rows to evaluate; check data.test.")
    ok = ~np.asarray(test.column("corrupt").to_pylist(), dtype=bool)
    pred = matrix(test.column("probs")).argmax(axis=1)
    labels = np.asarray(test.column("label").to_pylist())
    return float((pred[ok] == labels[ok]).mean())


def finish(run: RunDir, log=print) -> list[dict]:
    from ray_al.report import area_under_curve, format_table, plot_learning_curves

    rows = run.results()
    run.write_results_jsonl()
    if not rows:
        return rows
    png_local = Path(run.uri) / "learning_curve.png" if not io.is_s3(run.uri) else Path("/tmp/learning_curve.png")
    title = f"{rows[0]['dataset']}: {rows[0]['method']} ({rows[0]['mode']}) + {rows[0]['select']}"
    plot_learning_curves(rows, str(png_local), title=title, group_by=("select",))
    if io.is_s3(run.uri):
        io.write_bytes_atomic(io.join(run.uri, "learning_curve.png"), png_local.read_bytes())
    log("\n" + format_table(rows))
    auc = area_under_curve([r["labels"] for r in rows], [r["accuracy"] for r in rows])
    log(f"\narea under the learning curve: {auc:.4f}")
    log(f"results: {io.join(run.uri, 'results.jsonl')}\nplot:    {io.join(run.uri, 'learning_curve.png')}\n"
        f"ledger:  {io.join(run.uri, 'ledger')} (python -m ray_al.label status {run.uri})")
    return rows


def _same_config(saved: dict | None, snapshot: dict) -> bool:
    if saved is None:
        return False
    try:
        return config_mod.from_dict(saved).to_dict() == snapshot
    except ConfigError:  # a key this version no longer knows
        return False


def open_run(cfg: Config, run_uri: str, resume: bool) -> tuple[RunDir, PoolSpec, Config]:
    if resume:
        run = RunDir.open(run_uri)
        cfg = config_mod.from_dict(run.info["config"])
        io.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
        return run, PoolSpec.from_dict(run.info["pool"]["spec"]), cfg
    from ray_al.data.pool import prepare

    io.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
    snapshot = cfg.to_dict()
    info_path = io.join(run_uri, "run.json")
    if io.exists(info_path) and not cfg.run.overwrite:
        existing = io.read_json(info_path)
        # same experiment: carry on where it stopped. Read through from_dict, so a run saved before a
        # key was added (with its default) still matches.
        if _same_config(existing.get("config"), snapshot):
            return RunDir.open(run_uri), PoolSpec.from_dict(existing["pool"]["spec"]), cfg
    if cfg.run.overwrite and io.exists(run_uri):
        io.remove_tree(run_uri)
    spec = prepare(cfg.data, run_uri, cfg.al.seed)
    check_budget(cfg, spec.pool_rows)
    info = {"config": snapshot, "num_classes": spec.num_classes, "class_names": list(spec.class_names),
            "id_type": spec.id_type,
            "pool": {"uri": spec.pool_uri, "id_column": "id", "image_column": spec.image_column,
                     "path_column": "path", "spec": spec.to_dict()}}
    return RunDir.create(run_uri, info, overwrite=cfg.run.overwrite), spec, cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ray_al.cycle",
        description="Run active-learning rounds: train, embed, select, label. With no arguments: the embedded "
                    "default (digits, small CNN, k-center) on a local Ray.",
        epilog="Overrides: section.key=value, e.g. al.rounds=3 train.epochs=2. Keys and defaults:\n\n"
               + config_mod.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--config", help="YAML experiment config (see configs/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its first unfinished step")
    parser.add_argument("--smoke-test", action="store_true", help="tiny data, one epoch, two rounds")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after flags


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_mod.load(args.config, args.overrides)
        if args.smoke_test:
            cfg = config_mod.smoke(cfg)
        check_config(cfg)
        run_uri = args.resume or (cfg.run.dir if cfg.run.dir != config_mod.RunConfig().dir or
                                  any(o.startswith("run.dir=") for o in args.overrides)
                                  else default_run_dir(cfg, args.smoke_test))
        if args.resume and args.overrides:
            raise ConfigError("--resume continues a run with its own saved config; drop the overrides "
                              f"({' '.join(args.overrides)}) or start a new run directory.")
        from ray_al.ray_utils import init_ray

        init_ray(cfg.run.ray_num_cpus)
        run, spec, cfg = open_run(cfg, run_uri, bool(args.resume))
        print(f"run directory: {run.uri}  (pool: {spec.pool_rows} images, {spec.num_classes} classes; "
              f"{cfg.train.method}/{cfg.train.mode} + {cfg.select.method})", flush=True)
        Cycle(cfg, run, spec, log=lambda m: print(m, flush=True)).run_all()
        finish(run)
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError) as exc:
        # Our user-facing errors are ValueErrors that say what to do; RAY_AL_DEBUG=1 shows the traceback.
        if os.environ.get("RAY_AL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
