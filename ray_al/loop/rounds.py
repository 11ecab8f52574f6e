"""The active-learning round loop, and the only place that orders the stages.

Each round: train -> embed + evaluate -> select -> label (oracle) -> commit. `Cycle` only orders these steps
and records them; the work is elsewhere: training and embedding in the run's backend (ray_al.loop.backend:
a fit and an actor pool per round, or one resident worker group), the encoder and features a run computes
once in ray_al.loop.features, the query choice in ray_al.loop.selection, the config rules in
ray_al.loop.rules. Every step writes its outputs, then a step marker; the round manifest is written last. A
killed run resumes at the first step without a marker, so no label is lost or duplicated.
`on_round_committed(row)` is called after each round's commit (the sweep reports rounds to Ray Tune
through it).

    run, pool, cfg = open_run(cfg, run_uri, resume=False)
    Cycle(cfg, run, pool).run_all()
    finish(run)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al.core import config as config_mod
from ray_al.core import faults, storage
from ray_al.core.config import BudgetError, Config, ConfigError, head_only
from ray_al.data.pool import PoolError, PoolSpec, labelled_ids
from ray_al.loop import selection
from ray_al.loop.backend import Backend, open_backend, train_seed
from ray_al.loop.features import RunFeatures, wants_pool_features
from ray_al.loop.rules import check_budget, check_embeddings_run
from ray_al.run.ledger import Ledger
from ray_al.run.oracle import PoolOracle, query_uris
from ray_al.run.rundir import SEED_ROUND, RunDir, batch_name

__all__ = ["Cycle", "default_run_dir", "finish", "open_run"]


def default_run_dir(cfg: Config, smoke: bool) -> str:
    name = f"{cfg.data.dataset}-{cfg.train.method}-{cfg.train.mode}-{cfg.select.method}-seed{cfg.al.seed}"
    return str(Path("runs") / (name + ("-smoke" if smoke else "")))


# ----------------------------------------------------------------------------- the rounds
class Cycle:
    """Orders one run's stages (module docstring); `close` frees the backend's workers."""

    def __init__(self, cfg: Config, run: RunDir, pool: PoolSpec, log=print,
                 on_round_committed: Callable[[dict], None] | None = None):
        self.cfg, self.run, self.pool, self.log, self.on_round_committed = cfg, run, pool, log, on_round_committed
        self.features = RunFeatures(cfg, run, pool, log)
        self.oracle = PoolOracle(pool.pool_uri)  # al.oracle=simulated: answers from the pool's labels
        self._backend: Backend | None = None  # chosen on first use, once for the run

    def ledger(self) -> Ledger:
        return Ledger.load(self.run.uri, id_type=self.pool.id_type)

    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.cfg, self.run, self.pool, self.features)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # ----------------------------------------------------------------- steps
    def initial_step(self) -> bool:
        """The seed set, in the ledger as round 0 (`initial_ids`). With al.oracle=file a non-random al.initial
        picks among every pool row, written as the seed query batch: False until `python -m ray_al.label
        import` commits its answers as ledger round 0."""
        ledger = self.ledger()
        if len(ledger):
            return True
        if self.cfg.al.initial != "random" and self.cfg.al.oracle == "file":
            if not self.run.is_done(SEED_ROUND, "select"):
                chosen = selection.seed_set(self.cfg, self.features.pool_uri, None, self.cfg.al.seed)
                self.run.write_queries(SEED_ROUND, chosen, query_uris(self.pool.pool_uri, self.pool.image_column, chosen))
                self.run.mark_done(SEED_ROUND, "select", {"k": len(chosen), "selected_by": self.cfg.al.initial})
            ask_for_labels(self.log, self.run.uri, SEED_ROUND, self.run.step_payload(SEED_ROUND, "select")["k"])
            return False
        chosen = initial_ids(self.cfg, self.pool, self.features.pool_uri, self.log)
        labels = self.oracle.answer(chosen)
        ledger.add(chosen, labels, 0, "initial", num_classes=self.pool.num_classes).commit(self.run.uri)
        return True

    def train_step(self, r: int, ledger: Ledger, init_state: dict | None) -> dict:
        from ray_al.models.weights import state_from_bytes, state_to_bytes

        model_uri = self.run.round_uri(r, "model.pt")
        if not self.backend().trains:  # selection only: no model, nothing to mark
            return None
        if self.run.is_done(r, "train"):
            return state_from_bytes(storage.read_bytes(model_uri))
        out = self.backend().train(round_request(self.cfg, r, ledger, init_state))
        storage.write_bytes_atomic(model_uri, state_to_bytes(out.state_dict))
        self.run.mark_done(r, "train", {"seconds": out.seconds, "metrics": out.metrics, "labels": len(ledger)})
        return out.state_dict

    def embed_step(self, r: int, ledger: Ledger, state: dict) -> dict:
        """Embed the unlabeled, labeled and test splits; the test split gives the round's accuracy."""
        if self.run.is_done(r, "embed"):
            return self.run.step_payload(r, "embed")
        started, out_uri = time.perf_counter(), self.run.round_uri(r, "embeddings")
        self.backend().embed(state, ledger.ids, out_uri)
        faults.kill_point("embed.written")
        payload = {"seconds": time.perf_counter() - started, **_evaluate(out_uri, r, self.log, bool(self.pool.test_uri))}
        self.run.mark_done(r, "embed", payload)
        return payload

    def select_step(self, r: int, ledger: Ledger) -> list:
        if self.run.is_done(r, "select"):
            return self.run.read_queries(r).column("id").to_pylist()
        started, k = time.perf_counter(), config_mod.round_budget(self.cfg, r)
        chosen = selection.choose_queries(self.cfg, self.run.round_uri(r, "embeddings"), ledger, k, r,
                                          zero_shot_uri=self.run.path("zero_shot_order.parquet"),
                                          features_uri=self.features.pool_uri)
        self.run.write_queries(r, chosen.ids, query_uris(self.pool.pool_uri, self.pool.image_column, chosen.ids))
        faults.kill_point("select.written")
        self.run.mark_done(r, "select", {"seconds": time.perf_counter() - started, "k": k,
                                         "selected_by": chosen.method, "why": chosen.why})
        return list(chosen.ids)

    def label_step(self, r: int, ids: list, ledger: Ledger) -> Ledger | None:
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
        labels = self.oracle.answer(ids)
        # ledger round r + 1: the first training round that uses these labels
        new = ledger.add(ids, labels, r + 1, "query", num_classes=self.pool.num_classes).commit(self.run.uri)
        faults.kill_point("label.committed")
        self.run.mark_done(r, "label", {"seconds": time.perf_counter() - started, "labels": len(ids)})
        return new

    # ----------------------------------------------------------------- the loop
    def run_all(self) -> list[dict]:
        """Every round not committed yet; stops early while a file oracle's labels are pending."""
        printed = False
        try:
            init_state = self.features.encoder_state()
            if wants_pool_features(self.cfg):
                self.features.pool_features(init_state)
            if not self.initial_step():
                return self.run.results()
            for r in range(self.cfg.al.rounds + 1):
                if self.run.is_round_committed(r):
                    continue
                row = self.run_round(r, init_state)
                if row is None:  # its queries await a file oracle's labels
                    break
                _log_row(self.log, row, header=not printed)
                printed = True
        finally:
            self.close()
        return self.run.results()

    def run_round(self, r: int, init_state: dict | None) -> dict | None:
        """Round r's steps, then its commit; None while its queries await a file oracle's labels."""
        ledger = self.ledger().up_to_round(r)
        state = self.train_step(r, ledger, init_state)
        faults.kill_point("train.done")
        embedded = self.embed_step(r, ledger, state)
        faults.kill_point("embed.done")
        seconds = {"train": self.run.step_payload(r, "train")["seconds"] if state is not None else 0.0,
                   "embed": embedded["seconds"]}
        chosen = None
        if r < self.cfg.al.rounds:  # the last round trains and evaluates only
            ids = self.select_step(r, ledger)
            faults.kill_point("select.done")
            chosen = self.run.step_payload(r, "select")
            seconds["select"] = chosen["seconds"]
            if self.label_step(r, ids, self.ledger()) is None:
                ask_for_labels(self.log, self.run.uri, r, len(ids))
                return None
            faults.kill_point("label.done")
            seconds["label"] = self.run.step_payload(r, "label").get("seconds", 0.0)  # an import has no timing
        row = round_row(self.cfg, r, len(ledger), embedded, chosen, seconds)
        self.run.commit_round(r, row)
        if self.cfg.run.keep_embeddings == "last":
            self.run.drop_embeddings_before(r)
        faults.kill_point("round.committed")
        if self.on_round_committed is not None:
            self.on_round_committed(row)
        return row



def round_request(cfg: Config, r: int, ledger: Ledger, init_state: dict | None):
    """Round r's TrainRequest: CE on the in-class labels ("none of these classes" answers count in the
    budget only), SSL too in a joint run with an SSL method, only the head when the encoder is fixed."""
    from ray_al.workers.train import TrainRequest

    known = ledger.in_class()
    return TrainRequest(name=f"round_{r:04d}", labeled_ids=known.ids, labeled_labels=known.labels,
                        seed=train_seed(cfg, r), epochs=cfg.train.epochs, use_ce=True,
                        use_ssl=cfg.train.mode == "joint" and cfg.train.method != "none",
                        head_only=head_only(cfg), init_state=init_state, desc=f"train round {r}")


def ask_for_labels(log, run_uri: str, r: int, n: int) -> None:
    log(f"\n{batch_name(r)}: {n} images await labels. Export them with\n"
        f"  python -m ray_al.label export {run_uri} --out queries.csv\n"
        f"then import the answers and continue with\n"
        f"  python -m ray_al.label import {run_uri} labels.csv\n"
        f"  python -m ray_al.cycle --resume {run_uri}")


def initial_ids(cfg: Config, pool: PoolSpec, features_uri: str, log=print) -> np.ndarray:
    """The seed set among the pool rows whose `label` is known (null = unlabeled), so a real pool needs only
    its seed labels filled in. al.initial=random: a seeded draw; otherwise al.initial's pick on the
    self-supervised features (selection.seed_set)."""
    if not pool.has_labels:
        raise ConfigError(
            "the pool has no `label` column, so there is no seed set to start from: add a `label` column "
            f"holding the labels you already have (null elsewhere), at least al.initial_size="
            f"{cfg.al.initial_size} of them, and use al.oracle=file for the rest.")
    known = labelled_ids(pool.pool_uri)
    if len(known) < cfg.al.initial_size:
        raise BudgetError(f"al.initial_size={cfg.al.initial_size} but only {len(known)} pool rows have a "
                          "label; lower al.initial_size or label more seed images.")
    if cfg.al.initial == "random":
        rng = np.random.default_rng(cfg.al.seed)
        at = np.sort(rng.choice(len(known), cfg.al.initial_size, replace=False))
        return known.take(pa.array(at)).to_numpy(zero_copy_only=False)
    chosen = selection.seed_set(cfg, features_uri, known, cfg.al.seed)
    log(f"seed set: {len(chosen)} images by {cfg.al.initial} on the self-supervised features")
    return chosen


def round_row(cfg: Config, r: int, labels: int, embedded: dict, chosen: dict | None, seconds: dict) -> dict:
    """Round r's results row (results.jsonl); `chosen`: its select step's payload (None in the last round)."""
    row = {"round": r, "labels": labels, "accuracy": embedded["accuracy"], "seconds": seconds,
           "method": cfg.train.method, "mode": cfg.train.mode, "select": cfg.select.method,
           "budget": cfg.al.budget, "seed": cfg.al.seed, "dataset": cfg.data.dataset,
           "corrupt": embedded["corrupt"]}
    if chosen is not None:
        row.update(selected_by=chosen.get("selected_by", cfg.select.method), why=chosen.get("why", ""))
    return row


def _log_row(log, row: dict, header: bool) -> None:
    from ray_al.core.report import format_table

    if header:
        log(format_table([]).split("\n")[0])
    log(format_table([row]).split("\n")[-1])


def _evaluate(out_uri: str, r: int, log=print, has_test: bool = True) -> dict:
    """Test accuracy over the decodable test images (None without a test split), and the pool ids that could
    not be decoded (logged)."""
    from ray_al.core.embeddings import drop_corrupt, matrix, read_embeddings

    test = read_embeddings(out_uri, "test", columns=["probs", "label", "corrupt"]) if has_test else None
    if has_test and test.num_rows == 0:
        raise PoolError("the test split produced no rows to evaluate; check data.test.")
    rows, accuracy = 0, None
    if has_test:
        rows, test = test.num_rows, drop_corrupt(test)
        accuracy = float((matrix(test.column("probs")).argmax(axis=1) == test.column("label").to_numpy()).mean())
    bad: list = []
    for split in ("unlabeled", "labeled"):
        t = read_embeddings(out_uri, split, columns=["id", "corrupt"])
        if t.num_rows:
            bad += t.filter(t.column("corrupt")).column("id").to_pylist()
    if bad:
        log(f"round {r}: {len(bad)} pool images could not be decoded and are left out "
            f"(ids: {bad[:10]}{' ...' if len(bad) > 10 else ''})")
    return {"accuracy": accuracy, "corrupt_ids": bad[:1000], "corrupt": len(bad), "test_rows": rows}


# ----------------------------------------------------------------------------- opening and closing a run
def finish(run: RunDir, log=print) -> list[dict]:
    """results.jsonl and the learning-curve plot from the committed rounds; prints the table."""
    from ray_al.core.report import area_under_curve, format_table, learning_curve_png

    rows = run.results()
    run.write_results_jsonl()
    if not rows:
        return rows
    log("\n" + format_table(rows))
    plot = storage.join(run.uri, "learning_curve.png")
    if any(r["accuracy"] is None for r in rows):  # no test split: nothing to plot
        log("no test split (data.test): rounds report no accuracy and no learning curve")
        plot = "-"
    else:
        title = f"{rows[0]['dataset']}: {rows[0]['method']} ({rows[0]['mode']}) + {rows[0]['select']}"
        # drawn in memory: concurrent runs (sweep trials on one node) share no local file
        storage.write_bytes_atomic(plot, learning_curve_png(rows, title, group_by=("select",)))
        auc = area_under_curve([r["labels"] for r in rows], [r["accuracy"] for r in rows])
        log(f"\narea under the learning curve: {auc:.4f}")
    log(f"results: {storage.join(run.uri, 'results.jsonl')}\nplot:    {plot}\n"
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
    """(run directory, PoolSpec, config): a resumed run keeps its saved config; a new run with the
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
    pool = prepare(cfg.data, run_uri, cfg.data.subsample_seed if cfg.data.subsample_seed >= 0 else cfg.al.seed,
                   model=cfg.model)
    check_budget(cfg, pool.pool_rows)
    if cfg.data.embeddings:
        from ray_al.data.user_embeddings import has_probs

        check_embeddings_run(cfg, pool.has_labels, has_probs(pool.pool_uri))
    info = {"config": snapshot, "num_classes": pool.num_classes, "class_names": list(pool.class_names),
            "id_type": pool.id_type,
            "pool": {"uri": pool.pool_uri, "id_column": "id", "image_column": pool.image_column,
                     "path_column": "path", "spec": pool.to_dict()}}  # "spec": the PoolSpec, a run.json key
    return RunDir.create(run_uri, info, overwrite=cfg.run.overwrite), pool, cfg
