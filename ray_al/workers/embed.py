"""Streaming embedding with Ray Data: decode -> learner in an actor pool -> Parquet shards per split.

Output (the contract of core/embeddings.py):
RUN_DIR/rounds/NNNN/embeddings/split=<unlabeled|labeled|test>/*.parquet with
`id`, `embedding` (float32 list), `probs` (float32 list), `corrupt`, and `committee` (members x classes,
flattened) when a committee method needs it; test rows keep `label`. The weights travel once through the
object store; each actor fetches them when it starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ray_al.core import faults, storage
from ray_al.data.images import decode_batch
from ray_al.data.pool import PoolSpec
from ray_al.core.embeddings import fixed_list
from ray_al.core.ids import id_keys, splitmix64
from ray_al.workers.ray_utils import node_id

_ROWS_PER_BLOCK_IN_BATCHES = 4  # blocks handed to the actors: a few batches each, so every actor gets work


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 256
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    dtype: str = "float32"
    committee_size: int = 0  # > 0: MC-dropout passes stored in `committee`
    committee_dropout: float = 0.25
    on_corrupt: str = "skip"
    normalize: bool = False  # store unit-length embeddings: distances become cosine distances
    features_only: bool = False  # store the encoder's raw features only (FeatureModel.feature_table)


class FeatureModel:
    """A learner in eval mode turning decoded pool rows into the contract's columns (all but `split`).
    Used by the Ray Data actors (`Embedder`) and by a resident training worker (ray_al.workers.resident)."""

    def __init__(self, weights: bytes, learner_kwargs: dict, options: EmbedOptions, device: str = "cpu"):
        # torch only here, in the workers: the driver imports this module and stays light
        import torch

        from ray_al.models.weights import build_learner, state_from_bytes

        self.torch, self.options, self.device = torch, options, device
        self.learner = build_learner(learner_kwargs)
        self.learner.load_state_dict(state_from_bytes(weights))
        self.learner.to(device).eval()
        self.dtype = torch.bfloat16 if options.dtype == "bfloat16" else torch.float32

    def table(self, decoded: dict) -> pa.Table:
        """decoded: `id`, `pixels` uint8 (B, H, W, C), `corrupt` and, for test rows, `label`."""
        return self.table_from_features(decoded, self.features(decoded["pixels"]))

    def _autocast(self):
        torch = self.torch
        return torch.autocast(device_type=self.device, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """(B, D) float32 encoder features of uint8 pixels (B, H, W, C), before any normalisation."""
        from ray_al.core.augment import to_model_input

        torch = self.torch
        with torch.no_grad(), self._autocast():
            feats = self.learner.encoder(to_model_input(torch.from_numpy(pixels), self.device))
        return feats.float().cpu().numpy()

    def encoder_digest(self) -> str:
        """models.weights.encoder_digest of this learner: equal digests, equal features."""
        from ray_al.models.weights import encoder_digest

        return encoder_digest(self.learner.state_dict(), self.options.dtype)

    def feature_table(self, decoded: dict) -> pa.Table:
        """`id`, the encoder's raw `features`, `corrupt` (and test rows' `label`): what a frozen encoder's
        run stores once (EmbedOptions.features_only) and `HeadEmbedder` turns into the contract's columns."""
        columns = {"id": pa.array(decoded["id"]), "features": fixed_list(self.features(decoded["pixels"])),
                   "corrupt": pa.array(decoded["corrupt"])}
        if "label" in decoded:
            columns["label"] = _labels(decoded["label"])
        return pa.table(columns)

    def table_from_features(self, decoded: dict, features: np.ndarray) -> pa.Table:
        """The contract's columns for `decoded` (its pixels unused) from its encoder `features`: the head's
        probabilities, the committee and the (normalised) embeddings."""
        torch = self.torch
        # stored features arrive read-only from Arrow: a batch-sized copy, which torch may write
        feats = torch.from_numpy(np.array(features, dtype=np.float32, order="C")).to(self.device)
        with torch.no_grad(), self._autocast():
            logits = self.learner.classifier(feats)
            committee = self._mc_dropout(feats, decoded["id"]) if self.options.committee_size else None
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if self.options.normalize:  # after the committee, which feeds raw features to the classifier
            feats = torch.nn.functional.normalize(feats.float(), dim=1)
        columns = {
            "id": pa.array(decoded["id"]),
            "embedding": fixed_list(feats.float().cpu().numpy()),
            "probs": fixed_list(probs),
            "corrupt": pa.array(decoded["corrupt"]),
        }
        if committee is not None:
            columns["committee"] = fixed_list(committee.reshape(len(probs), -1))
        if "label" in decoded:  # test rows only; the union gives other splits a null label
            columns["label"] = _labels(decoded["label"])
        return pa.table(columns)

    def _mc_dropout(self, feats, ids) -> np.ndarray:
        """(B, members, C) class probabilities from dropout on the features. Each row's masks are a hash of
        its id, member and feature index, so an id gets the same committee whatever batch Ray Data puts it
        in (reruns and resumed rounds agree)."""
        torch = self.torch
        p = self.learner.dropout.p or self.options.committee_dropout
        u = _hash_uniform(ids, self.options.committee_size, feats.shape[1])  # (B, members, D) in [0, 1)
        mask = torch.from_numpy((u >= p).astype(np.float32) / (1.0 - p)).to(feats.device)  # (B, members, D)
        logits = self.learner.classifier(feats[:, None, :] * mask)  # (B, members, C)
        return torch.softmax(logits.float(), dim=2).cpu().numpy()


def _actor_threads(options: EmbedOptions) -> None:
    """One torch thread per CPU Ray gave this actor: more threads only fight the other actors for cores."""
    import torch

    torch.set_num_threads(max(1, int(options.cpus_per_actor)))


def _labels(values) -> pa.Array:
    return pa.array([None if v is None or v != v else int(v) for v in values], pa.int64())


class Embedder:
    """Ray Data callable class: decodes a batch and runs a `FeatureModel`; one instance per actor."""

    def __init__(self, weights_box: list, learner_kwargs: dict, pool: PoolSpec, options: EmbedOptions):
        import ray
        import torch

        _actor_threads(options)
        device = "cuda" if options.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.model = FeatureModel(ray.get(weights_box[0]), learner_kwargs, options, device)
        self.pool, self.options = pool, options

    @property
    def learner(self):
        return self.model.learner

    def __call__(self, batch: dict) -> pa.Table:
        faults.hold_point("embed.batch", node_id)
        split = batch.pop("split")
        decoded = decode_batch(batch, self.pool.image_size, self.pool.channels, self.options.on_corrupt,
                               read_uri=storage.read_bytes)
        table = self.model.feature_table(decoded) if self.options.features_only else self.model.table(decoded)
        return table.append_column("split", pa.array(split))


class HeadEmbedder:
    """Ray Data callable class: the contract's columns from stored encoder features (a frozen encoder's
    run: `features_only` once, then only the head per round); `head_model` and `head_table` do the work."""

    def __init__(self, weights_box: list, learner_kwargs: dict, options: EmbedOptions, digest: str):
        import ray

        _actor_threads(options)
        self.model = head_model(ray.get(weights_box[0]), learner_kwargs, options, digest)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return head_table(self.model, batch).append_column("split", batch.column("split"))


def head_model(weights: bytes, learner_kwargs: dict, options: EmbedOptions, digest: str) -> FeatureModel:
    """The round's model for stored encoder features: refuses weights whose encoder is not the one that
    computed them (`digest`)."""
    model = FeatureModel(weights, learner_kwargs, options)
    if model.encoder_digest() != digest:
        raise RuntimeError("the stored encoder features were computed by another encoder than this round's "
                           "model: delete the run's frozen_features.json to recompute them")
    return model


def head_table(model: FeatureModel, batch: pa.Table | pa.RecordBatch) -> pa.Table:
    """The contract's columns (all but `split`) of a batch of stored features: `id`, `features`, `corrupt`
    and, for test rows, `label`."""
    from ray_al.core.embeddings import matrix

    decoded = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("id", "corrupt")}
    if "label" in batch.schema.names:
        decoded["label"] = batch.column("label").to_pylist()
    return model.table_from_features(decoded, matrix(batch.column("features")).copy())  # torch wants it writable


def _hash_uniform(ids, members: int, width: int) -> np.ndarray:
    """(B, members, width) float32 uniforms in [0, 1), a pure function of (id, member, index)."""
    counters = np.arange(members * width, dtype=np.uint64).reshape(1, members, width)
    z = splitmix64(id_keys(ids)[:, None, None] + counters)  # (B, members, width)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def _check_cpus(options: EmbedOptions, cluster_cpus: float) -> None:
    """Ray Data's listing/read/write tasks need a whole CPU each: an actor that takes every CPU of the
    cluster leaves them none, and the embedding would hang (seen: 1 actor x 2 CPUs on a 2-CPU Ray)."""
    if options.gpus_per_actor == 0 and cluster_cpus and options.cpus_per_actor >= cluster_cpus:
        raise ValueError(
            f"embed.cpus_per_actor={options.cpus_per_actor:g} takes all {cluster_cpus:g} CPUs of this Ray cluster, "
            "leaving none for Ray Data's read and write tasks: the embedding would hang. Give each actor fewer "
            f"CPUs (at most {max(cluster_cpus - 1, 1):g}); several 1-CPU actors (embed.actors) use the cores as well."
        )


def pool_bounds(options: EmbedOptions, cluster_cpus: float) -> tuple[int, int]:
    """(min, max) actors of the embedding pool. Ray Data's autoscaling pool starts at its minimum and adds
    actors only as its queue backs up, so a pool that starts at one actor leaves cores idle for much of a
    pass (python -m ray_al.bench.embed: 0.635 of the plain loop, against 0.859 with the pool started whole).
    The pool starts whole when the cluster's CPUs hold every actor and still leave one CPU for the read and
    write tasks (which a CPU-bound pool taking them all would starve); GPU actors start whole too. Otherwise
    (fewer CPUs known, an autoscaling cluster still at its head) it starts at what fits, at least one."""
    most = max(1, options.actors)
    if options.gpus_per_actor:
        return most, most
    fits = int((cluster_cpus - 1.0) // options.cpus_per_actor) if options.cpus_per_actor > 0 else most
    return min(most, max(1, fits)), most


def embed_splits(dataset, weights: bytes, learner_kwargs: dict, pool: PoolSpec, options: EmbedOptions,
                 out_uri: str) -> str:
    """Embed a Ray Dataset of raw pool rows with a `split` column (`data.reader.embedding_input`,
    `tag_split`) in one actor pool into out_uri, partitioned by split."""
    return _actor_pool_to_parquet(dataset, Embedder, {"learner_kwargs": learner_kwargs, "pool": pool},
                                  weights, options, out_uri, batch_format="numpy")


def embed_heads(dataset, weights: bytes, learner_kwargs: dict, options: EmbedOptions, out_uri: str,
                digest: str) -> str:
    """The contract's columns from stored encoder features with a `split` column
    (`data.reader.features_input`): only the learner's head runs, in one actor pool, into out_uri."""
    return _actor_pool_to_parquet(dataset, HeadEmbedder, {"learner_kwargs": learner_kwargs, "digest": digest},
                                  weights, options, out_uri, batch_format="pyarrow")


def apply_heads_here(features_uri: str, labeled_ids, weights: bytes, learner_kwargs: dict, options: EmbedOptions,
                     out_uri: str, digest: str) -> str:
    """`embed_heads` in this process, with no actor pool: the stored features streamed a batch at a time
    through the head (`head_table`, as HeadEmbedder runs it) into out_uri's splits, in
    files of core.embeddings.FILE_ROWS rows. For pools where an actor pool's start (~13 s a round on 12,000
    rows of a 2-core machine, configs/sweep_pretrained_cifar10.yaml) costs more than the head itself."""
    from ray_al.core.embeddings import SplitFiles, batches, split_dataset, write_by_ids
    from ray_al.data.lookup import value_set
    from ray_al.data.reader import FROZEN_POOL

    model = head_model(weights, learner_kwargs, options, digest)
    if storage.exists(out_uri):
        storage.remove_tree(out_uri)
    fs, root = storage.pyarrow_fs(out_uri)
    files = {name: SplitFiles(fs, root, name) for name in ("labeled", "unlabeled", "test")}
    try:
        for source in (FROZEN_POOL, "test"):
            dataset = split_dataset(features_uri, source)
            if dataset is None:  # a run without a test split
                continue
            columns = [c for c in ("id", "features", "corrupt", "label") if c in dataset.schema.names]
            labeled = value_set(labeled_ids, dataset.schema.field("id").type, features_uri)
            for batch in batches(dataset, columns):
                for part in head_table(model, batch).to_batches():
                    if source == "test":
                        files["test"].write(part)
                    else:
                        write_by_ids(files, part, labeled)
    finally:
        for split in files.values():
            split.close()
    return out_uri


def _actor_pool_to_parquet(dataset, callable_class, ctor_kwargs: dict, weights: bytes, options: EmbedOptions,
                           out_uri: str, batch_format: str) -> str:
    import ray

    from ray_al.workers.ray_utils import ensure_ray

    ensure_ray()
    # A Parquet read yields blocks of up to 128 MiB (a whole CIFAR-sized file is one block), and an actor
    # takes whole blocks: without this, one actor embeds the whole pool while the others idle. Streaming
    # (no shuffle, no barrier): big blocks are cut into pieces of a few batches.
    union = dataset.repartition(target_num_rows_per_block=_ROWS_PER_BLOCK_IN_BATCHES * int(options.batch_size))
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    _check_cpus(options, cluster_cpus)
    low, high = pool_bounds(options, cluster_cpus)
    weights_box = [ray.put(weights)]  # boxed so Ray passes the ref, not the bytes, to each actor
    out = union.map_batches(
        callable_class,
        fn_constructor_kwargs={"weights_box": weights_box, "options": options, **ctor_kwargs},
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=int(options.batch_size),
        batch_format=batch_format,
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    if storage.exists(out_uri):  # a rerun after a crash: start the directory afresh (write_parquet appends)
        storage.remove_tree(out_uri)
    fs, path = storage.pyarrow_fs(out_uri)
    out.write_parquet(path, filesystem=fs, partition_cols=["split"])
    return out_uri
