"""Selection: from a round's embedding Parquet to the ids to query, the same way for every strategy.

`strategy_input` is the one function that reads a round's embeddings for selection. It drops the rows
whose image could not be decoded (`embeddings.drop_corrupt`: such an image was embedded as zero pixels,
so it must never be queried nor stand for a labeled example) and returns what the strategy needs:

* a `PoolView` (every acquisition strategy, the heads committee, zero-shot ordering), or
* `ShardFiles` for k-center over Ray shard actors (`select.shards > 1`): the unlabeled split's files, which
  each actor loads itself and filters with the same `drop_corrupt`, and the labeled features as centers.

Labeled images answered "none of these classes" (ledger.OOD_LABEL) are in the labeled split, so they are
never candidates. They stay in the labeled features (a labeled image covers its neighbourhood for k-center,
typiclust and probcover, so a cluster of foreign images is not queried again), but never stand for a class:
`for_method` leaves them out wherever labels per class are read (weibull, the heads committee, the `auto`
policy's labels per class).

`choose_queries` runs the configured strategy on it. No Ray here: the shard actors live in
ray_al.workers.kcenter_shards, imported only when `select.shards > 1`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al import acquisition

from ray_al.core import storage
from ray_al.acquisition import PoolView
from ray_al.acquisition.policy import AUTO, PROBE_SAMPLE, Choice, decide, probe_confidence
from ray_al.core.config import BudgetError, Config
from ray_al.core.embeddings import (drop_corrupt, fixed_list, gather, list_width, matrix, read_decodable,
                               read_embeddings, split_columns, split_files, split_rows)
from ray_al.run.ledger import OOD_LABEL, Ledger


log = logging.getLogger("ray_al.loop.selection")


@dataclass(frozen=True)
class ShardFiles:
    """What the distributed k-center needs: files to load in the actors, not rows in the driver."""

    files: list[str]  # the unlabeled split's Parquet files
    filesystem: Any  # pyarrow filesystem of an s3:// run, else None
    labeled_embeddings: np.ndarray | None  # (L, d) decodable labeled rows, OOD answers too: the initial centers
    n: int  # decodable unlabeled rows


@dataclass(frozen=True)
class Selection:
    """A round's query ids, the method that chose them and why (method=auto, a fallback, saturation)."""

    ids: list
    method: str
    why: str


def needs_committee(cfg: Config) -> bool:
    """Whether the selection method, its fallback or a pre-filter scores committee disagreement (auto's
    methods never): a committee fallback needs one the rounds its method cannot run yet."""
    return any("committee_probs" in acquisition.needs(method, optional=False, prefilter=cfg.select.prefilter
                                                      if method == cfg.select.method else None)
               for method in (cfg.select.method, cfg.select.fallback) if method != AUTO)


def embed_options(cfg: Config):
    """The embed step's EmbedOptions. MC-dropout passes are an embedding output, computed only when a
    committee method needs them; a heads committee is fitted at selection time instead."""
    from ray_al.workers.embed import EmbedOptions

    committee = cfg.select.committee == "mc_dropout" and needs_committee(cfg)
    return EmbedOptions(
        batch_size=cfg.embed.batch_size, actors=cfg.embed.actors, cpus_per_actor=cfg.embed.cpus_per_actor,
        gpus_per_actor=cfg.embed.gpus_per_actor, dtype=cfg.embed.dtype,
        committee_size=cfg.select.committee_size if committee else 0, on_corrupt=cfg.data.on_corrupt,
        normalize=cfg.embed.normalize,
    )


def selection_seed(cfg: Config, r: int) -> int:
    """Seed of round r's selection (random draws, cold-start centers, committee resamples)."""
    return cfg.al.seed * 1000 + r


def strategy_options(cfg: Config, method: str | None = None) -> dict:
    """Options of `method` (default select.method): prefilter_factor wherever the strategy takes it
    (hybrids such as entropy_kcenter too, so one config key sets every pre-filter), select.scaling for the
    geometric methods, prefilter when one is set, and an `info` record for the strategies that fill one."""
    method = method or cfg.select.method
    accepted = acquisition.get(method).options
    options = {"prefilter_factor": cfg.select.prefilter_factor} if "prefilter_factor" in accepted else {}
    if "scaling" in accepted:
        options["scaling"] = cfg.select.scaling
    if cfg.select.prefilter and "prefilter" in accepted:
        options["prefilter"] = cfg.select.prefilter
    if "info" in accepted:
        options["info"] = {}
    return options


def on_shards(cfg: Config) -> bool:
    """Plain k-center over select.shards Ray actors (pre-filters and zero-shot run in one process)."""
    return (cfg.select.method == "kcenter" and cfg.select.shards > 1 and not cfg.select.prefilter
            and not cfg.select.zero_shot)


# ----------------------------------------------------------------------------- embeddings -> strategy input
def strategy_input(cfg: Config, emb_uri: str, labels_by_id: dict, r: int,
                   features_uri: str = "", fields: set[str] | None = None) -> PoolView | ShardFiles:
    """A round's embeddings as the strategy's input, undecodable rows dropped (module docstring);
    features_uri: the self-supervised features that replace `embedding` with select.features=pretrained.
    The labeled fields hold every labeled row, OOD answers (label OOD_LABEL) included: pass the view
    through `for_method` before a strategy reads it. fields: the PoolView fields the method reads
    (`fields_for`; None = all): the unlabeled embeddings (n x d, the driver's largest matrix) and the
    committee are read only when asked for."""
    labeled = _features(cfg, drop_corrupt(read_embeddings(emb_uri, "labeled")), features_uri)
    labeled_embeddings = matrix(labeled.column("embedding")) if labeled.num_rows else None
    if on_shards(cfg):
        decodable = drop_corrupt(read_embeddings(emb_uri, "unlabeled", columns=["corrupt"]))
        fs = storage.pyarrow_fs(emb_uri)[0] if storage.is_s3(emb_uri) else None
        return ShardFiles(split_files(emb_uri, "unlabeled"), fs, labeled_embeddings, decodable.num_rows)
    wants = (lambda field: True) if fields is None else fields.__contains__
    ids, probs, embeddings, stored = _unlabeled(cfg, emb_uri, features_uri, wants("embeddings"),
                                                wants("committee_probs"))
    labeled_ids = _ids(labeled)
    return PoolView(
        ids=ids,
        probs=probs,
        embeddings=embeddings,
        committee_probs=_committee(cfg, stored, _in_class(labeled, labels_by_id), labels_by_id, embeddings,
                                   probs.shape[1], r) if wants("committee_probs") else None,
        labeled_embeddings=labeled_embeddings,
        labeled_labels=(np.asarray([labels_by_id[i] for i in labeled_ids.tolist()], dtype=np.int64)
                        if labeled.num_rows else None),
        labeled_probs=matrix(labeled.column("probs")) if labeled.num_rows and "probs" in labeled.schema.names else None,
    )


def _unlabeled(cfg: Config, emb_uri: str, features_uri: str, embeddings: bool = True, committee: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The decodable unlabeled rows' ids, probs, embeddings (_features'; when asked for, or a heads
    committee needs them) and stored committee (when _committee reads it), each read straight into its own
    array: the driver never holds the split as a table, so its peak is about these arrays."""
    pretrained = cfg.select.features == "pretrained"
    embeddings = embeddings or (committee and _heads(cfg))
    stored = (committee and not cfg.select.zero_shot and not _heads(cfg)
              and "committee" in split_columns(emb_uri, "unlabeled"))
    probs = "probs" in split_columns(emb_uri, "unlabeled")  # a user's embeddings may have none
    columns = (["probs"] if probs else []) + (["embedding"] if embeddings and not pretrained else []) \
        + (["committee"] if stored else [])
    ids, read = read_decodable(emb_uri, "unlabeled", columns)
    features = (_pretrained(ids, features_uri) if pretrained else read["embedding"]) if embeddings else None
    return _ids(ids), read.get("probs"), features, read.get("committee")


def _in_class(labeled: pa.Table, labels_by_id: dict) -> pa.Table:
    """The labeled rows whose label is a class (OOD answers left out)."""
    if not labeled.num_rows:
        return labeled
    keep = [labels_by_id[i] != OOD_LABEL for i in labeled.column("id").to_pylist()]
    return labeled.filter(pa.array(keep, pa.bool_()))


def for_method(method: str, view: PoolView, prefilter: str | None = None) -> PoolView:
    """The view `method` (with its pre-filter) reads, in the PoolView contract (labels in range): a
    method that reads labeled_labels or labeled_probs (weibull) gets the in-class labeled rows only; any
    other keeps every labeled embedding, OOD answers included, as covered ground, and no labels."""
    if view.labeled_labels is None:
        return view
    if not acquisition.needs(method, prefilter=prefilter) & {"labeled_labels", "labeled_probs"}:
        return dataclasses.replace(view, labeled_labels=None, labeled_probs=None)
    keep = np.asarray(view.labeled_labels) != OOD_LABEL
    rows = {f: None if getattr(view, f) is None else np.asarray(getattr(view, f))[keep]
            for f in ("labeled_embeddings", "labeled_labels", "labeled_probs")}
    return dataclasses.replace(view, **rows)


def _features(cfg: Config, table: pa.Table, features_uri: str) -> pa.Table:
    """`table` with its `embedding` column taken from the self-supervised features (matched by id) when
    select.features=pretrained; the class probabilities stay the round model's."""
    if cfg.select.features != "pretrained" or not table.num_rows:
        return table
    column = table.schema.get_field_index("embedding")
    return table.set_column(column, "embedding", fixed_list(_pretrained(table.column("id"), features_uri)))


def _pretrained(ids: pa.ChunkedArray, features_uri: str) -> np.ndarray:
    """(len(ids), d) self-supervised features of these ids, matched by id, read batch by batch."""
    if not len(ids):
        return np.zeros((0, 0), dtype=np.float32)
    at = pc.index_in(ids, value_set=read_embeddings(features_uri, "unlabeled", columns=["id"]).column("id"))
    if at.null_count:
        raise ValueError(f"{at.null_count} ids have no self-supervised features in {features_uri}: delete it and "
                         "its pool_features.json, then --resume to compute them again.")
    return gather(features_uri, "unlabeled", "embedding", at.to_numpy())


def seed_set(cfg: Config, features_uri: str, known: np.ndarray | pa.ChunkedArray | None, seed: int) -> np.ndarray:
    """al.initial_size ids chosen by al.initial on the self-supervised features, among the ids whose
    labels the oracle knows (None: every pool row, for a file oracle); no labels yet, so the strategies'
    cold-start behaviour."""
    table = drop_corrupt(read_embeddings(features_uri, "unlabeled"))
    if known is not None:
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(known)))
    if table.num_rows < cfg.al.initial_size:
        among = "pool images" if known is None else "pool images have a label the oracle knows and"
        raise BudgetError(f"al.initial_size={cfg.al.initial_size} but only {table.num_rows} {among} decode.")
    probs = matrix(table.column("probs")) if "probs" in table.schema.names else None
    view = PoolView(ids=_ids(table), probs=probs, embeddings=matrix(table.column("embedding")))
    positions = acquisition.select(cfg.al.initial, view, cfg.al.initial_size, seed=seed,
                                   **{k: v for k, v in strategy_options(cfg, cfg.al.initial).items() if k != "prefilter"})
    return view.ids[positions]


def _ids(table: pa.Table | pa.ChunkedArray) -> np.ndarray:
    """(n,) ids (of a table, or its id column) as numpy (int64, or objects for string ids), without a
    Python list of them all."""
    column = table.column("id") if isinstance(table, pa.Table) else table
    return column.to_numpy() if len(column) else np.zeros(0, np.int64)


def _heads(cfg: Config) -> bool:
    """Whether selection fits a heads committee now (any stored MC-dropout column is then not read)."""
    return cfg.select.committee == "heads" and needs_committee(cfg)


def _committee(cfg: Config, stored: np.ndarray | None, labeled: pa.Table, labels_by_id: dict, embeddings: np.ndarray,
               n_classes: int, r: int) -> np.ndarray | None:
    """(m, n, C) committee probabilities: heads bagged on the labeled embeddings now, or the embed step's
    MC-dropout passes (`stored`, rows x members*classes); None when no committee is in the files or needed."""
    if cfg.select.zero_shot:
        return None
    if _heads(cfg):
        from ray_al.acquisition.heads import heads_committee_probs

        ids = _ids(labeled)
        return heads_committee_probs(
            matrix(labeled.column("embedding")) if len(ids) else np.zeros((0, embeddings.shape[1]), np.float32),
            np.asarray([labels_by_id[i] for i in ids.tolist()], dtype=np.int64), embeddings, n_classes,
            size=cfg.select.committee_size,
            seed=selection_seed(cfg, r), labeled_ids=ids)
    if stored is not None:
        return stored.reshape(len(stored), cfg.select.committee_size, -1).transpose(1, 0, 2)
    return None


# ----------------------------------------------------------------------------- strategy input -> query ids
def choose_queries(cfg: Config, emb_uri: str, ledger: Ledger, k: int, r: int, zero_shot_uri: str = "",
               features_uri: str = "") -> Selection:
    """The k ids round r queries, and which method chose them. zero_shot_uri: the run's zero-shot order;
    features_uri: the self-supervised features (select.features=pretrained). The round's method is
    chosen before the embeddings are read, so only what it reads is (margin: no n x d matrix)."""
    in_one_process = not on_shards(cfg) and not cfg.select.zero_shot
    choice = round_choice(cfg, emb_uri, ledger) if in_one_process else None
    fields = fields_for(cfg, choice)
    source = strategy_input(cfg, emb_uri, ledger.labels_by_id(), r, features_uri, fields)
    if k > source.n:
        raise BudgetError(f"round {r}: al.budget={k} is larger than the {source.n} unlabeled images left; "
                          "lower al.budget or al.rounds.")
    if isinstance(source, ShardFiles):
        ids = _kcenter_on_shards(source, k, cfg.select.shards, selection_seed(cfg, r))
        return Selection(ids, "kcenter", f"select.method=kcenter on {cfg.select.shards} shard actors")
    if cfg.select.zero_shot:
        return Selection(zero_shot_prefix(zero_shot_uri, source, ledger, k, cfg.al.seed), "kcenter",
                         "select.zero_shot: a prefix of the round-0 k-center order")
    try:
        positions, choice = _run(cfg, choice, source, k, r)
        return Selection(source.ids[positions].tolist(), choice.method, choice.why)
    except acquisition.NotReady as e:
        log.warning("round %d: %s cannot select yet (%s); using select.fallback=%s", r, choice.method, e,
                    cfg.select.fallback)
        fallback = Choice(cfg.select.fallback, f"{choice.method} could not run yet: fell back to "
                                               f"select.fallback={cfg.select.fallback}")
    fallback_fields = fields_for(cfg, fallback)
    if not fallback_fields <= fields:  # the fallback reads more: read again
        source = None  # one copy of the split's arrays at a time
        source = strategy_input(cfg, emb_uri, ledger.labels_by_id(), r, features_uri, fallback_fields)
    positions, choice = _run(cfg, fallback, source, k, r)
    return Selection(source.ids[positions].tolist(), choice.method, choice.why)


def fields_for(cfg: Config, choice: Choice | None) -> set[str] | None:
    """The PoolView fields `choice`'s method reads, its pre-filter's included (None: every field)."""
    if choice is None:
        return None
    prefilter = strategy_options(cfg, choice.method).get("prefilter")
    return {"probs"} | acquisition.needs(choice.method, prefilter=prefilter)


def round_choice(cfg: Config, emb_uri: str, ledger: Ledger) -> Choice:
    """select.method, or what `auto` runs this round (policy.decide). Its data rule reads pool_conf through the
    probe it was measured with (policy.probe_confidence), on the labeled rows' features and a seeded sample of
    PROBE_SAMPLE unlabeled rows, not the round head's probabilities (their confidence scale is the head's
    training's); a margin round then reads no n x d matrix. select.auto_switch_per_class = 0 asks for the
    data rule, N > 0 for the fixed one."""
    if cfg.select.method != AUTO:
        return Choice(cfg.select.method, "select.method")
    n_labeled, n_classes = len(ledger.in_class()), list_width(emb_uri, "unlabeled", "probs")

    def read_signals() -> dict[str, float]:
        return {"pool_conf": _probe_confidence(cfg, emb_uri, ledger), "per_class": n_labeled / max(1, n_classes)}

    return decide(n_labeled, n_classes, cfg.select.auto_switch_per_class or None, read_signals)[0]


def _probe_confidence(cfg: Config, emb_uri: str, ledger: Ledger) -> float:
    """policy.probe_confidence on the round's embeddings: the labeled rows with a class, and a seeded sample
    of the unlabeled split's rows."""
    ids, read = read_decodable(emb_uri, "labeled", ["embedding"])
    labels = ledger.labels_by_id()
    y = np.asarray([labels[i] for i in _ids(ids).tolist()], np.int64)
    n = split_rows(emb_uri, "unlabeled")
    if not n:
        return 0.0
    at = np.sort(np.random.default_rng(cfg.al.seed).choice(n, min(n, PROBE_SAMPLE), replace=False))
    x = read["embedding"]
    return probe_confidence(x[y >= 0], y[y >= 0], gather(emb_uri, "unlabeled", "embedding", at))


def _run(cfg: Config, choice: Choice, view: PoolView, k: int, r: int) -> tuple[np.ndarray, Choice]:
    """Positions chosen by choice.method; a strategy that fell back part-way (probcover's saturated
    coverage) says so in the returned choice."""
    options = strategy_options(cfg, choice.method)
    view = for_method(choice.method, view, options.get("prefilter"))
    positions = acquisition.select(choice.method, view, k, seed=selection_seed(cfg, r), **options)
    info = options.get("info") or {}
    if info.get("fallback_used"):
        choice = Choice(choice.method, f"{choice.why}; coverage saturated: {info['fallback_count']} of {k} "
                                       f"from {info['fallback']}")
    return positions, choice


def _kcenter_on_shards(source: ShardFiles, k: int, shards: int, seed: int) -> list:
    from ray_al.workers.ray_utils import ensure_ray
    from ray_al.acquisition.kcenter_greedy import KCenterOptions
    from ray_al.workers.kcenter_shards import EmbeddingFiles, kcenter_select_distributed

    ensure_ray()
    chosen, _stats = kcenter_select_distributed(EmbeddingFiles(source.files, source.filesystem), k,
                                                labeled_features=source.labeled_embeddings, seed=seed,
                                                options=KCenterOptions(shards=shards))
    return list(chosen)


def zero_shot_prefix(uri: str, view: PoolView, ledger: Ledger, k: int, seed: int) -> list:
    """Zero-shot AL: order the pool once by k-center on the first round's features (the seed set as
    centers) and save it at `uri`; every round takes the next k unlabeled ids of that order, so budgets
    are prefixes of one order."""
    from ray_al.acquisition.kcenter_greedy import zero_shot_order

    if not storage.exists(uri):
        order = zero_shot_order(view.embeddings, seed=seed, labeled_features=view.labeled_embeddings)
        storage.write_parquet_atomic(uri, pa.table({"id": pa.array(view.ids[order]),
                                                    "rank": pa.array(np.arange(len(order)))}))
    ordered = storage.read_parquet(uri, columns=["id"]).column("id")
    labeled = pc.is_in(ordered, value_set=ledger.table.column("id").combine_chunks().cast(ordered.type))
    return ordered.filter(pc.invert(labeled)).slice(0, k).to_pylist()
