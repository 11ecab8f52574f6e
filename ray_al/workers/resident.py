"""A Ray Train worker group that lives for a whole run and serves its rounds (train.resident).

Per round, a new `TorchTrainer.fit` pays ~20 s of Ray start-up (controller, worker actors, `import torch`,
train context) and the embedding's actor pool ~10 s more, for well under a second of work on a small pool
(docs/RESULTS.md, "Per-round overhead: Ray Data's reader and one read per embedding", commit 9b6890d).
A resident group starts once, decodes the pool and the test split once into every worker's memory, and
then runs jobs the driver posts on a `JobBoard` actor:
* train: one round's model from this round's labeled set (the same data, seeds and steps as a per-round
  fit with sharding="replicate", so the same model), epoch checkpoints through `ray.train.report` tagged
  with the round; a worker group that Ray Train restarts (FailureConfig), or a new group after a killed
  driver, continues the round from its last checkpoint;
* embed: the round's embeddings, each rank writing its share of every split to
  RUN_DIR/rounds/NNNN/embeddings/split=<s>/part-<rank>.parquet (the contract of core/embeddings.py).
It holds the whole decoded pool in every worker, so it is for pools that fit (`wanted`); larger pools take
the per-round path (Ray Data streaming into a fit, an embedding actor pool). The loop reaches both paths
through one interface, ray_al.loop.backend, which asks `wanted` once per run.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ray_al.core import storage
from ray_al.core.config import Config, head_only
from ray_al.core.ids import seeded_sample
from ray_al.data.pool import PoolSpec

# train.resident=auto: resident while the decoded pool + test split (uint8) fit in this per worker
MAX_DECODED_BYTES = 2 << 30
RUN_NAME = "resident"
_DECODE_ROWS = 1024
# Embedding files of a few batches each, as the Ray Data path writes them: sharded k-center hands whole
# files to its shard actors, so one file per rank would leave all but one shard empty.
FILE_BATCHES = 4


def wanted(cfg: Config, pool: PoolSpec) -> bool:
    """Whether this run's rounds go to a resident group (train.resident; module docstring)."""
    if cfg.train.resident != "auto":
        return cfg.train.resident == "always"
    if head_only(cfg):  # a fixed encoder's heads train on its stored features in the driver (loop.backend)
        return False
    # sharded k-center's actors and GPU embedding actors need resources the group would hold
    if cfg.select.shards > 1 or (cfg.embed.gpus_per_actor > 0 and not cfg.train.use_gpu):
        return False
    rows = pool.pool_rows + _count_rows(pool.test_uri)
    return rows * pool.image_size ** 2 * pool.channels <= MAX_DECODED_BYTES


def _count_rows(uri: str) -> int:
    import pyarrow.dataset as pads

    if not uri:  # no test split
        return 0
    fs, path = storage.pyarrow_fs(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


# ----------------------------------------------------------------------------- the board (an actor)


@dataclass(frozen=True)
class Job:
    seq: int
    kind: str  # "train" | "embed" | "stop"
    name: str = ""  # the round's name: tags its checkpoints
    spec: object = None  # train: a ray_al.workers.train.TrainSpec
    weights: object = None  # embed: ObjectRef of the learner's state bytes
    learner: dict = field(default_factory=dict)  # embed: learner kwargs
    options: object = None  # embed: ray_al.workers.embed.EmbedOptions
    out_uri: str = ""
    labeled_ids: np.ndarray | None = None
    keep_features: bool = False  # embed: the encoder is frozen for the run, its features may be kept


class JobBoard:
    """The driver posts one job at a time; every rank takes it, does its part and reports. A job counts
    as done when all ranks reported in one go: a restarted group (after=0) redoes an unfinished job."""

    def __init__(self, world: int):
        self.world, self.job, self.done, self.result = world, None, set(), None
        self.cv = threading.Condition()

    def post(self, job: Job) -> None:
        with self.cv:
            self.job, self.done, self.result = job, set(), None
            self.cv.notify_all()

    def next_job(self, after: int, timeout: float) -> Job | None:
        with self.cv:
            self.cv.wait_for(self._pending(after), timeout)
            return self.job if self._pending(after)() else None

    def _pending(self, after: int):
        return lambda: self.job is not None and self.job.seq > after and len(self.done) < self.world

    def restart(self) -> None:
        """A new worker group: what the old one finished of an unfinished job no longer counts."""
        with self.cv:
            if len(self.done) < self.world:
                self.done = set()

    def finish(self, seq: int, rank: int, result) -> None:
        with self.cv:
            if self.job is None or seq != self.job.seq:
                return
            self.done.add(rank)
            if rank == 0:
                self.result = result
            self.cv.notify_all()

    def wait_done(self, seq: int, timeout: float) -> tuple[bool, object]:
        with self.cv:
            self.cv.wait_for(lambda: self._done(seq), timeout)
            return self._done(seq), self.result

    def _done(self, seq: int) -> bool:
        return self.job is not None and seq == self.job.seq and len(self.done) >= self.world


# ----------------------------------------------------------------------------- in the workers


@dataclass
class DecodedRows:
    """A split decoded once, sorted by id: ids, uint8 pixels (N, H, W, C), corrupt flags, labels or None."""

    ids: np.ndarray
    pixels: np.ndarray
    corrupt: np.ndarray
    labels: np.ndarray | None = None

    @classmethod
    def read(cls, uri: str, pool: PoolSpec, on_corrupt: str, with_label: bool, progress=None) -> "DecodedRows":
        """`progress(total, desc)`, when given, makes a ProgressLines-like counter of the images decoded."""
        from ray_al.data.images import decode_batch

        columns = ["id", pool.image_column] + (["label"] if with_label else [])
        if not uri:  # no test split: no rows
            shape = (0, pool.image_size, pool.image_size, pool.channels)
            return cls(np.zeros(0, np.int64), np.zeros(shape, np.uint8), np.zeros(0, bool),
                       np.zeros(0, np.int64) if with_label else None)
        table = storage.read_parquet(uri, columns=columns)
        lines = progress(table.num_rows, f"decoding {uri.rsplit('/', 1)[-1]} at {pool.image_size} px") if progress else None
        parts = []
        for batch in table.to_batches(max_chunksize=_DECODE_ROWS):
            raw = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in columns}
            parts.append(decode_batch(raw, pool.image_size, pool.channels, on_corrupt, read_uri=storage.read_bytes))
            if lines:
                lines.update(batch.num_rows)
        del table
        ids = np.concatenate([p["id"] for p in parts])
        order = np.argsort(ids, kind="stable")  # the order a per-round fit trains in (train._collect)
        return cls(ids[order], np.concatenate([p["pixels"] for p in parts])[order],
                   np.concatenate([p["corrupt"] for p in parts])[order],
                   np.concatenate([p["label"] for p in parts])[order] if with_label else None)

    def rows(self, mask: np.ndarray) -> dict:
        out = {"id": self.ids[mask], "pixels": self.pixels[mask], "corrupt": self.corrupt[mask]}
        if self.labels is not None:
            out["label"] = self.labels[mask]
        return out


def train_tensors(rows: DecodedRows, spec):
    """This round's TrainTensors from the decoded pool `rows` and a ray_al.workers.train.TrainSpec, as a
    per-round fit collects them."""
    import torch

    from ray_al.models.trainloop import TrainTensors, ids_to_keys

    req = spec.request
    usable = ~rows.corrupt
    labeled = np.isin(rows.ids, req.labeled_ids) & usable if req.use_ce else np.zeros(len(rows.ids), bool)
    unlabeled = usable & ~labeled if spec.use_ssl and spec.has_unlabeled else np.zeros(len(rows.ids), bool)
    unlabeled &= seeded_sample(rows.ids, req.seed, spec.unlabeled_fraction)  # as the per-round read samples
    lid = rows.ids[labeled]
    labels_by_id = dict(zip(req.labeled_ids.tolist(), req.labeled_labels.tolist()))
    ly = np.asarray([labels_by_id[i] for i in lid.tolist()], dtype=np.int64)
    return TrainTensors(torch.from_numpy(rows.pixels[labeled]), torch.from_numpy(ly),
                        torch.from_numpy(rows.pixels[unlabeled]),
                        labeled_keys=torch.from_numpy(ids_to_keys(lid)),
                        unlabeled_keys=torch.from_numpy(ids_to_keys(rows.ids[unlabeled])))


def resident_loop(config: dict) -> dict:
    """Every worker: decode the data once, then take jobs until told to stop."""
    import ray
    import ray.train
    import ray.train.torch

    from ray_al.workers.train import all_gather_strings, load_checkpoint, quiet_train_logs

    quiet_train_logs()
    board, pool, on_corrupt = config["board"], config["pool"], config["on_corrupt"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0:
        ray.get(board.restart.remote())
    nodes = all_gather_strings(ray.get_runtime_context().get_node_id(), world)
    progress = _rank0_lines(rank)
    pool_rows = DecodedRows.read(pool.pool_uri, pool, on_corrupt, with_label=False, progress=progress)
    test_rows = DecodedRows.read(pool.test_uri, pool, on_corrupt, with_label=True, progress=progress)
    checkpoint = ray.train.get_checkpoint()
    restored = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            restored = load_checkpoint(d)
    after = 0
    while True:
        job = ray.get(board.next_job.remote(after, 5.0))
        if job is None:
            continue
        after = job.seq
        if job.kind == "stop":
            return {"nodes": nodes}
        if job.kind == "train":
            result = _train_job(job, pool_rows, rank, world, restored)
            restored = None  # only the job the group restarted in continues a checkpoint
        else:
            result = _embed_job(job, pool_rows, test_rows, rank, world, ray.train.torch.get_device(), progress)
        ray.get(board.finish.remote(job.seq, rank, {**result, "nodes": nodes} if rank == 0 else None))


def _rank0_lines(rank: int, every_s: float = 30.0):
    """Rank 0 reports the long one-off steps (decoding the pool, a frozen encoder's features) as lines in the
    driver's log; the other ranks do the same work in step and stay quiet."""
    from ray_al.workers.train import ProgressLines

    if rank != 0:
        return None
    return lambda total, desc: ProgressLines(total, f"resident group: {desc}", unit="images", every_s=every_s,
                                             quiet_if_fast=True)


def _train_job(job: Job, pool_rows: DecodedRows, rank: int, world: int, restored: dict | None) -> dict:
    from ray_al.models.weights import state_to_bytes
    from ray_al.workers.train import epoch_plan, prepare_model, run_epochs, train_state

    spec = job.spec
    data = train_tensors(pool_rows, spec)
    objective, learner = prepare_model(spec, world)
    plan = epoch_plan(spec, data, rank, world)
    state = train_state(spec, plan, objective, learner)
    start_epoch = state.restore(restored) if restored and restored.get("tag") == job.name else 0
    history = run_epochs(spec, plan, state, data, start_epoch, tag=job.name, last_checkpoint_due=False)
    if rank != 0:
        return {}
    metrics = {k: v for k, v in (history[-1] if history else {}).items() if k != "report_seconds"}
    return {"state": state_to_bytes(learner.state_dict()), "metrics": metrics, "history": history,
            "start_epoch": start_epoch}


# This worker's encoder features of its share of the pool and of the test split, kept while the encoder
# does not change: a frozen encoder (train.mode=frozen, or pretrain's head-only rounds) embeds them once per
# run, and every later round only runs its head. Kept up to MAX_KEPT_FEATURES bytes.
_kept: dict = {}
MAX_KEPT_FEATURES = 512 << 20


def _embed_job(job: Job, pool_rows: DecodedRows, test_rows: DecodedRows, rank: int, world: int, device,
               progress=None) -> dict:
    import ray

    from ray_al.workers.embed import FeatureModel

    model = FeatureModel(ray.get(job.weights), job.learner, job.options, str(device.type))
    digest = model.encoder_digest() if job.keep_features else None
    reused = digest is not None and _kept.get("digest") == digest
    if not reused:
        _kept.clear()
    batch = job.options.batch_size
    labeled = np.isin(pool_rows.ids, job.labeled_ids)
    mine = np.arange(len(pool_rows.ids)) % world == rank
    mine_test = np.arange(len(test_rows.ids)) % world == rank
    features = {name: _kept[name] if reused else RankFeatures.of(model, rows, share, batch, progress, name)
                for name, rows, share in (("pool", pool_rows, mine), ("test", test_rows, mine_test))}
    splits = (("labeled", pool_rows, labeled & mine, "pool"), ("unlabeled", pool_rows, ~labeled & mine, "pool"),
              ("test", test_rows, mine_test, "test"))
    for split, rows, mask, name in splits:
        index = np.flatnonzero(mask)
        step = FILE_BATCHES * batch
        for n, start in enumerate(range(0, len(index), step)):
            part = index[start:start + step]
            tables = [model.table_from_features(rows.rows(chunk), features[name].at(chunk))
                      for chunk in (part[i:i + batch] for i in range(0, len(part), batch))]
            storage.write_parquet_atomic(
                storage.join(job.out_uri, f"split={split}", f"part-{rank:04d}-{n:05d}.parquet"), pa.concat_tables(tables))
    if digest is not None and sum(f.values.nbytes for f in features.values()) <= MAX_KEPT_FEATURES:
        _kept.update(features, digest=digest)
    return {"features_reused": reused}


@dataclass
class RankFeatures:
    """Encoder features of this rank's rows of a split: `values[k]` belongs to row `rows[k]`."""

    rows: np.ndarray  # (K,) row positions in the DecodedRows, ascending
    values: np.ndarray  # (K, D) float32

    @classmethod
    def of(cls, model, decoded: DecodedRows, share: np.ndarray, batch: int, progress=None,
           name: str = "") -> "RankFeatures":
        rows = np.flatnonzero(share)
        lines = progress(len(rows), f"encoder features of this rank's {name} rows") if progress and len(rows) else None
        parts = []
        for i in range(0, len(rows), batch):
            parts.append(model.features(decoded.pixels[rows[i:i + batch]]))
            if lines:
                lines.update(len(parts[-1]))
        return cls(rows, np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))

    def at(self, positions: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.rows, positions)]


# ----------------------------------------------------------------------------- in the driver


class ResidentGroup:
    """Starts the group on first use; `train` and `embed` post a job and wait for it; `close` stops it."""

    def __init__(self, cfg: Config, pool: PoolSpec, storage_uri: str):
        # the workers run in Ray Train's artifacts directory: relative paths would land there
        self.pool = dataclasses.replace(pool, pool_uri=storage.absolute(pool.pool_uri),
                                        test_uri=storage.absolute(pool.test_uri))
        self.cfg, self.storage_uri = cfg, storage_uri
        self.workers = max(1, cfg.train.num_workers)
        self.board = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.seq = 0

    def _start(self) -> None:
        import ray

        from ray_al.workers.ray_utils import ensure_ray
        from ray_al.workers.train import torch_trainer

        ensure_ray()
        self.board = ray.remote(num_cpus=0, max_concurrency=4 * self.workers + 4)(JobBoard).remote(self.workers)
        trainer = torch_trainer(self.cfg, resident_loop,
                                {"board": self.board, "pool": self.pool, "on_corrupt": self.cfg.data.on_corrupt},
                                self.storage_uri, RUN_NAME, self.workers)
        self.thread = threading.Thread(target=self._fit, args=(trainer,), name="ray_al-resident", daemon=True)
        self.thread.start()

    def _fit(self, trainer) -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the driver's thread by _wait
            self.error = exc

    def _run(self, **job) -> dict:
        import ray

        if self.thread is None:
            self._start()
        self.seq += 1
        ray.get(self.board.post.remote(Job(seq=self.seq, **job)))  # a threaded actor may reorder calls
        return self._wait(self.seq)

    def _wait(self, seq: int) -> dict:
        import ray

        while True:
            done, result = ray.get(self.board.wait_done.remote(seq, 1.0))
            if done:
                return result or {}
            if not self.thread.is_alive():
                raise RuntimeError(f"the resident training group stopped: {self.error or 'no error given'}. "
                                   "See the worker logs above; train.resident=never runs a fit per round."
                                   ) from self.error

    def train(self, request):
        """One round's training from a ray_al.workers.train.TrainRequest, with every worker holding the
        whole pool (sharding="replicate"); its checkpoints are tagged with request.name."""
        from ray_al.models.weights import state_from_bytes
        from ray_al.workers.train import TrainOutcome, checked_spec

        started = time.perf_counter()
        spec = checked_spec(self.cfg, self.pool, dataclasses.replace(request, sharding="replicate"))
        out = self._run(kind="train", name=request.name, spec=spec)
        return TrainOutcome(state_dict=state_from_bytes(out["state"]), metrics=out["metrics"],
                            seconds=time.perf_counter() - started, history=out["history"], nodes=out["nodes"])

    def embed(self, weights: bytes, learner_kwargs: dict, options, out_uri: str, labeled_ids,
              keep_features: bool = False) -> dict:
        """Rank 0's answer: `features_reused` when the encoder's kept features served (keep_features: the
        encoder is frozen for the run, so the workers keep its features for the next embedding)."""
        import ray

        if storage.exists(out_uri):  # a rerun after a crash: start the directory afresh
            storage.remove_tree(out_uri)
        return self._run(kind="embed", weights=ray.put(weights), learner=learner_kwargs, options=options,
                         out_uri=storage.absolute(out_uri), labeled_ids=np.asarray(labeled_ids),
                         keep_features=keep_features)

    def close(self) -> None:
        if self.thread is None:
            return
        if self.thread.is_alive():
            self.seq += 1
            self.board.post.remote(Job(seq=self.seq, kind="stop"))  # no wait: a dead board is fine here
            self.thread.join(timeout=120)
        self.thread = None
