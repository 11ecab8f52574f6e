"""Ray Train plumbing: the driver turns one `TrainRequest` into a `TrainSpec` and a `TorchTrainer` (`fit`);
every worker runs `train_loop_per_worker`, which reads the spec's typed fields.

A round's training request is a `TrainRequest` from the loop (ray_al.loop.backend passes it unchanged to
`fit` here or to ray_al.workers.resident's group); `train_spec` adds what the config and the pool decide
(the learner, the lr, the SSL rows) and keeps the run's `TrainConfig` whole.

The loop itself is ray_al.models.trainloop (plain PyTorch); this module only moves data into workers, wraps the
model for DDP, and checkpoints at the end of epochs through `ray.train.report` so a lost worker
(FailureConfig) or a killed cycle resumes from the last checkpointed epoch. An epoch checkpoint costs ~2 s
(save, report, the controller's copy), which is 100x a digits epoch: `train.checkpoint_every_s` skips
epoch checkpoints younger than that (0 = every epoch); epochs longer than it checkpoint every time, and
the last epoch always does.

Data placement (`TrainRequest.sharding`):
* the labeled set is replicated to every worker (it is small) and sliced per global batch, so CE batches
  are those of one worker with N times the batch, and no label is lost to uneven shards;
* "split" (default): the SSL pool is a Ray Data shard per worker (`streaming_split`), which scales to
  pools larger than one worker's memory; which rows a rank gets is Ray Data's choice, so SSL batches
  differ from a 1-worker run's (same distribution, not the same rows);
* "replicate": every worker holds the whole pool and takes its slice of each global batch, so N workers
  x b train exactly the model of 1 worker x N*b (used by the equivalence test; fine for CPU-sized pools).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ray_al.core import faults
from ray_al.core.config import Config, ConfigError, TrainConfig
from ray_al.core.faults import FaultInjection
from ray_al.models import trainloop
from ray_al.data.pool import PoolSpec
from ray_al.models import convert_sync_batchnorm
from ray_al.models.weights import build_learner, learner_kwargs, state_from_bytes, state_to_bytes
from ray_al.workers.ray_utils import node_id

CHECKPOINT_FILE = "state.pt"
SHARDING = ("split", "replicate")
# DDP keyword arguments. Buffers need no per-step broadcast: BN statistics are global (GlobalBatchNorm)
# and MoBY/MoCo queues are filled with keys gathered in rank order, so they are equal on every rank;
# broadcasting two 4096 x 256 queues every forward would cost more than the step on a small model.
DDP_KWARGS = {"broadcast_buffers": False}


@dataclass(frozen=True, eq=False)
class TrainRequest:
    """One training run the loop asks for (a round's model, or the pre-training): built by the loop and
    passed unchanged through its backend (ray_al.loop.backend) to `fit` or the resident group."""

    name: str  # Ray Train's run name (round_0003, pretrain): its checkpoints; the same name resumes them
    labeled_ids: np.ndarray
    labeled_labels: np.ndarray  # aligned with labeled_ids
    seed: int
    epochs: int
    use_ce: bool = True
    use_ssl: bool | None = None  # None: whether `method` is an SSL method
    ssl_on_pool: bool = True  # False: SSL on the labeled images only
    head_only: bool = False  # train the classifier only; the encoder stays as init_state has it
    init_state: dict | None = None  # weights to start from
    method: str | None = None  # the SSL method; None: train.method
    desc: str = "train"  # the progress bar's label
    sharding: str = "split"  # "split" | "replicate" (module docstring)
    fault_injection: FaultInjection | None = None  # kills one worker once (tests and failure drills)
    progress: bool = True


@dataclass(frozen=True, eq=False)
class TrainSpec:
    """Everything a training worker reads, built in the driver by `train_spec` and passed as
    train_loop_config={"spec": ...}. Batch sizes (train.batch_size, ...) are per worker."""

    request: TrainRequest  # labeled ids sorted; its init_state travels as `init_state` bytes instead
    train: TrainConfig  # batch sizes, optimiser, schedule, SSL weight, sync_bn, checkpoint_every_s
    learner: dict  # JointLearner kwargs (ray_al.models.weights.learner_kwargs)
    lr: float  # train.lr, or train.pretrain_lr for SSL-only pre-training
    use_ssl: bool
    has_unlabeled: bool  # SSL reads the pool too, not only the labeled images
    unlabeled_fraction: float  # of the unlabeled pool, a seeded sample by id (train.unlabeled_per_round)
    progress_lines: bool  # the driver logs to a file: ProgressLines instead of a tqdm bar
    init_state: bytes | None = None  # weights to start from (state_to_bytes)
    fault_injection: FaultInjection | None = None  # the request's, or the armed `train.epoch` drill


@dataclass
class TrainOutcome:
    state_dict: dict  # the learner's weights
    metrics: dict  # last epoch's numeric metrics (loss, ce, ssl, epoch, start_epoch, ...)
    seconds: float  # wall time of trainer.fit(), Ray Train start-up included
    history: list = field(default_factory=list)  # per-epoch metrics of rank 0's last attempt
    nodes: list = field(default_factory=list)  # node id of each rank, in rank order


def load_checkpoint(directory: str) -> dict:
    """A checkpoint written by a worker (`TrainState.checkpoint`): tensors and plain types only."""
    return torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- in the workers


def train_loop_per_worker(config: dict) -> dict:
    """Runs in every Ray Train worker: load the data, train, report metrics + a checkpoint when due.
    Returns (rank 0's becomes Result.return_value) this attempt's per-epoch history and the placement."""
    import ray
    import ray.train

    spec: TrainSpec = config["spec"]
    quiet_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    nodes = all_gather_strings(ray.get_runtime_context().get_node_id(), world)
    objective, learner = prepare_model(spec, world)
    data = _load_data(spec)
    plan = epoch_plan(spec, data, rank, world)
    state = train_state(spec, plan, objective, learner)
    start_epoch = _restore(state)
    history = run_epochs(spec, plan, state, data, start_epoch)
    return {"history": history, "nodes": nodes, "start_epoch": start_epoch}


def quiet_train_logs() -> None:
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one line per checkpoint
    try:  # Train v2 logs every report at INFO under a logger named by its file path
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass


def prepare_model(spec: TrainSpec, world: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(objective wrapped for DDP by Ray Train, the learner inside it)."""
    import ray.train.torch

    torch.manual_seed(spec.request.seed)  # same initial weights and queues on every rank
    learner = build_learner(spec.learner)
    if spec.init_state is not None:
        learner.load_state_dict(state_from_bytes(spec.init_state), strict=False)
    trainloop.freeze_unused(learner, spec.request.head_only, spec.request.use_ce, spec.use_ssl)
    if world > 1 and spec.train.sync_bn:  # global-batch BN (works on gloo/CPU, unlike torch's SyncBatchNorm)
        learner = convert_sync_batchnorm(learner)
    objective = ray.train.torch.prepare_model(trainloop.JointObjective(learner),
                                              parallel_strategy_kwargs=dict(DDP_KWARGS))
    return objective, (objective.module if hasattr(objective, "module") else objective).learner


def train_state(spec: TrainSpec, plan: trainloop.EpochPlan, objective, learner) -> trainloop.TrainState:
    t = spec.train
    optimizer, scheduler = trainloop.make_optimizer(
        learner.trainable_parameters(), spec.lr, t.momentum, t.weight_decay, plan.n_steps * spec.request.epochs,
        tuple(t.milestones), t.optimizer, t.lr_schedule)
    return trainloop.TrainState(objective, learner, optimizer, scheduler)


def _collect(name: str, labels_by_id: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This worker's copy/shard of a dataset in memory as (ids, uint8 pixels, labels), sorted by id,
    corrupt rows dropped."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    ids, pixels = [], []
    for batch in shard.iter_batches(batch_size=2048, batch_format="numpy"):
        keep = ~batch["corrupt"]
        ids.append(batch["id"][keep])
        pixels.append(batch["pixels"][keep])
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64)
    ids_a, pix_a = np.concatenate(ids), np.concatenate(pixels)
    order = np.argsort(ids_a, kind="stable")  # Ray Data order varies between runs; ids do not
    ids_a, pix_a = ids_a[order], np.ascontiguousarray(pix_a[order])
    labels = (np.asarray([labels_by_id[i] for i in ids_a.tolist()], dtype=np.int64) if labels_by_id
              else np.zeros(0, np.int64))
    return ids_a, pix_a, labels


def _load_data(spec: TrainSpec) -> trainloop.TrainTensors:
    """The labeled set (when CE is on) and this worker's SSL pool rows (when SSL reads the pool)."""
    none = (np.zeros(0, np.int64), np.zeros((0, 1, 1, 1), dtype=np.uint8), np.zeros(0, np.int64))
    req = spec.request
    labels_by_id = dict(zip(req.labeled_ids.tolist(), req.labeled_labels.tolist()))
    lid, lx, ly = _collect("labeled", labels_by_id) if req.use_ce else none
    uid, ux, _ = _collect("unlabeled", None) if spec.use_ssl and spec.has_unlabeled else none
    return trainloop.TrainTensors(
        torch.from_numpy(lx), torch.from_numpy(ly.astype(np.int64)), torch.from_numpy(ux),
        labeled_keys=torch.from_numpy(trainloop.ids_to_keys(lid)),
        unlabeled_keys=torch.from_numpy(trainloop.ids_to_keys(uid)),
    )


def epoch_plan(spec: TrainSpec, data: trainloop.TrainTensors, rank: int, world: int) -> trainloop.EpochPlan:
    import ray.train.torch

    device = ray.train.torch.get_device()
    req, t = spec.request, spec.train
    ssl_global = req.sharding == "replicate" or world == 1
    n_ssl = len(data.ssl_source(world, rank, ssl_global)[0]) if spec.use_ssl else 0
    n_steps = trainloop.steps_per_epoch(len(data.labeled_x), n_ssl, t.batch_size, t.unlabeled_batch_size,
                                        spec.use_ssl, world=world, ssl_global=ssl_global, ce=req.use_ce)
    if world > 1 and not ssl_global:  # every rank must take the same number of steps or DDP hangs
        n_steps = _max_across_ranks(n_steps, device)
    return trainloop.EpochPlan(
        seed=req.seed, epochs=req.epochs, n_steps=n_steps, batch_size=t.batch_size,
        unlabeled_batch_size=t.unlabeled_batch_size, ssl_weight=t.ssl_weight, use_ssl=spec.use_ssl,
        use_ce=req.use_ce, rank=rank, world=world, ssl_global=ssl_global, device=device)


def _restore(state: trainloop.TrainState) -> int:
    """The first epoch to train: 0, or the one after the checkpoint Ray Train restored (a restarted
    worker group, or a rerun with the same storage and name)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0
    with checkpoint.as_directory() as d:
        return state.restore(load_checkpoint(d))


def run_epochs(spec: TrainSpec, plan: trainloop.EpochPlan, state: trainloop.TrainState,
               data: trainloop.TrainTensors, start_epoch: int, tag: str = "", last_checkpoint_due: bool = True
               ) -> list[dict]:
    """Epochs start_epoch.. with reports when due. tag: stored in the checkpoints (a resident group tells
    its rounds apart by it); last_checkpoint_due=False when the caller takes the weights another way."""
    bar = _progress_bar(spec, plan.rank, start_epoch)
    history = []
    last_checkpoint = time.monotonic()
    epochs = spec.request.epochs
    for epoch in range(start_epoch, epochs):
        metrics = _train_epoch(spec, plan, state, data, epoch, start_epoch)
        if bar is not None:
            bar.set_description(f"{spec.request.desc} loss {metrics['loss']:.3f}")
            bar.update(1)
        started = time.perf_counter()
        if _checkpoint_due(last_checkpoint, spec.train.checkpoint_every_s,
                           last_checkpoint_due and epoch == epochs - 1, plan.world, plan.device):
            _report(metrics, state, epoch, plan.rank, tag)
            last_checkpoint = time.monotonic()
        history.append({**metrics, "report_seconds": time.perf_counter() - started})
    if bar is not None:
        bar.close()
        sys.stdout.flush()  # the close travels as a stdout line: send it before the worker exits
    return history


def _train_epoch(spec: TrainSpec, plan: trainloop.EpochPlan, state: trainloop.TrainState,
                 data: trainloop.TrainTensors, epoch: int, start_epoch: int) -> dict:
    torch.manual_seed((spec.request.seed * 7919 + epoch) * 1009 + plan.rank)  # dropout: same after a resume
    started = time.perf_counter()
    metrics = trainloop.train_epoch(state, data, plan, epoch,
                                    on_step=faults.step_hook(spec.fault_injection, epoch, plan.rank, node_id,
                                                            checkpoint_registered))
    if plan.world > 1:
        metrics = _reduce_metrics(metrics, plan.device)
    metrics.update(epoch=epoch, start_epoch=start_epoch, steps=plan.n_steps, threads=torch.get_num_threads(),
                   train_seconds=time.perf_counter() - started)
    return metrics


def _report(metrics: dict, state: trainloop.TrainState, epoch: int, rank: int, tag: str = "") -> None:
    """ray.train.report with rank 0's checkpoint; collective, so every rank calls it."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            torch.save({**state.checkpoint(epoch), "tag": tag}, os.path.join(tmp, CHECKPOINT_FILE))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


class ProgressLines:
    """Progress for logs (the driver's stdout is no terminal: `ray job logs`, CI): a line at most every
    `every_s` and at the end, where a tqdm bar would print several lines per epoch. `unit` names what is
    counted (epochs of a fit, images a resident group decodes or embeds); `quiet_if_fast`: no line at all for
    work done within `every_s` (a small pool's embedding every round)."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0, unit: str = "epoch", quiet_if_fast: bool = False):
        self.total, self.desc, self.every_s, self.unit = total, desc, every_s, unit
        self.done, self.last, self.note = 0, time.monotonic(), desc
        self.printed = not quiet_if_fast  # the final line is due once any line was

    def update(self, n: int) -> None:
        self.done += n
        due = time.monotonic() - self.last >= self.every_s
        if due or (self.done >= self.total and self.printed):
            print(f"{self.note}: {self.unit} {self.done}/{self.total}", flush=True)
            self.last, self.printed = time.monotonic(), True

    def set_description(self, note: str) -> None:
        self.note = note

    def close(self) -> None:
        pass


def _progress_bar(spec: TrainSpec, rank: int, start_epoch: int):
    req = spec.request
    if rank != 0 or not req.progress:
        return None
    if spec.progress_lines:
        lines = ProgressLines(req.epochs, req.desc)
        lines.done = start_epoch
        return lines
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=req.epochs, desc=req.desc)
    if start_epoch:
        bar.update(start_epoch)
    return bar


def checkpoint_registered(epoch: int, wait_s: float) -> str:
    """Wait, at most `wait_s`, until Ray Train's controller has registered `epoch`'s checkpoint as the
    run's latest: its checkpoint manager snapshot (what a restarted run resumes from) names it. Returns ""
    once it does (at once for epoch < 0), else what the snapshot named instead."""
    import ray.train

    if epoch < 0:
        return ""
    storage_ctx = ray.train.get_context().get_storage()
    fs, path = storage_ctx.storage_filesystem, storage_ctx.checkpoint_manager_snapshot_path
    deadline, latest = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            with fs.open_input_stream(path) as f:
                latest = (json.loads(f.read()).get("latest_checkpoint_result") or {}).get("metrics", {})
        except (FileNotFoundError, OSError, ValueError):  # not written yet, or caught mid-write
            latest = None
        if latest and latest.get("epoch") == epoch:
            return ""
        time.sleep(0.2)
    return f" (epoch {epoch}'s checkpoint not registered within {wait_s:.0f} s: {path} names epoch " \
           f"{(latest or {}).get('epoch')} as the latest)"


def all_gather_strings(value: str, world: int) -> list[str]:
    if world == 1:
        return [value]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, value)
    return [str(v) for v in out]


def _max_across_ranks(value: int, device) -> int:
    import torch.distributed as dist

    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _checkpoint_due(last: float, every_s: float, last_epoch: bool, world: int, device) -> bool:
    """Due on every rank when due on any: ray.train.report is collective, so all ranks must agree."""
    due = last_epoch or time.monotonic() - last >= every_s
    return bool(_max_across_ranks(int(due), device)) if world > 1 else due


def _reduce_metrics(metrics: dict, device) -> dict:
    """Losses averaged over ranks (each rank's are means over its equal share), images summed."""
    import torch.distributed as dist

    keys = ["loss", "ce", "ssl", "images"]
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    out = {k: float(v) / world for k, v in zip(keys[:3], t.tolist()[:3])}
    out["images"] = int(round(t[3].item()))
    return {**metrics, **out}


# ----------------------------------------------------------------------------- in the driver


def train_spec(cfg: Config, pool: PoolSpec, request: TrainRequest) -> TrainSpec:
    """The workers' spec from the config, the pool and one request, checked (no data read yet)."""
    method = cfg.train.method if request.method is None else request.method
    use_ssl = (method != "none") if request.use_ssl is None else request.use_ssl
    if use_ssl and method == "none":
        raise ValueError("use_ssl=True needs an SSL method (train.method), not 'none'.")
    if request.sharding not in SHARDING:
        raise ConfigError(f"sharding='{request.sharding}' is not valid; choose one of {', '.join(SHARDING)}.")
    t = cfg.train
    order = np.argsort(np.asarray(request.labeled_ids), kind="stable")
    sorted_request = dataclasses.replace(request, labeled_ids=np.asarray(request.labeled_ids)[order],
                                         labeled_labels=np.asarray(request.labeled_labels)[order], init_state=None)
    return TrainSpec(
        request=sorted_request, train=t, learner=learner_kwargs(cfg, pool, method),
        # pre-training (SSL only, no labels) may have its own lr, as the SSL papers tune it separately
        lr=t.pretrain_lr if not request.use_ce and t.pretrain_lr > 0 else t.lr, use_ssl=use_ssl,
        has_unlabeled=use_ssl and request.ssl_on_pool,
        unlabeled_fraction=_unlabeled_fraction(cfg, pool, len(order)), progress_lines=not sys.stdout.isatty(),
        init_state=state_to_bytes(request.init_state) if request.init_state is not None else None,
        fault_injection=request.fault_injection or faults.driver_kill(),
    )


def _unlabeled_fraction(cfg: Config, pool: PoolSpec, n_labeled: int) -> float:
    """train.unlabeled_per_round as a fraction of the unlabeled pool (1.0: all of it). A worker then holds
    about that many pool images whatever the pool's size (MoBYv2AL and CoreGCN subsample alike)."""
    wanted = cfg.train.unlabeled_per_round  # >= 0 (ray_al.loop.rules)
    return min(1.0, wanted / max(1, pool.pool_rows - n_labeled)) if wanted else 1.0


def fit(cfg: Config, pool: PoolSpec, request: TrainRequest, storage_uri: str) -> TrainOutcome:
    """Train with Ray Train's TorchTrainer. Rerunning with the same storage_uri and request.name resumes
    from the last epoch checkpoint (Ray Train restores the run's checkpoint snapshot)."""
    from ray_al.workers.ray_utils import ensure_ray

    ensure_ray()
    spec = checked_spec(cfg, pool, request)
    workers = max(1, cfg.train.num_workers)
    datasets, labeled_read = _datasets(cfg, pool, spec, workers)
    trainer = _trainer(cfg, spec, datasets, storage_uri, workers)
    started = time.perf_counter()
    result = trainer.fit()
    out = _outcome(result, request.name, time.perf_counter() - started)
    # what the labeled read cost (in the train step's payload; bench.scale reports it per round)
    out.metrics.update({f"labeled_read_{k}": v for k, v in labeled_read.items() if isinstance(v, (int, float))})
    return out


def checked_spec(cfg: Config, pool: PoolSpec, request: TrainRequest) -> TrainSpec:
    """`train_spec`, refused in the driver when the data cannot feed the workers."""
    spec = train_spec(cfg, pool, request)
    req = spec.request
    n_ssl = (int(pool.pool_rows * spec.unlabeled_fraction) if spec.has_unlabeled
             else len(req.labeled_ids) if req.use_ce else 0)
    _check_sizes(len(req.labeled_ids), n_ssl, max(1, cfg.train.num_workers), cfg.train.batch_size, req.use_ce,
                 spec.use_ssl)
    return spec


def _check_sizes(n_labeled: int, n_ssl: int, workers: int, batch_size: int, use_ce: bool, use_ssl: bool) -> None:
    """Fail in the driver, before Ray Train retries a hopeless run max_failures times."""
    if batch_size < 2:
        raise ConfigError(f"train.batch_size={batch_size}: batch norm needs at least 2 images per worker batch.")
    if use_ce and n_labeled < 2 * workers:
        raise ConfigError(f"{n_labeled} labeled images cannot feed train.num_workers={workers} workers (batch norm "
                         "needs at least 2 per worker): label more (al.initial_size) or use fewer workers.")
    if use_ssl and n_ssl < 2 * workers:
        raise ConfigError(f"{n_ssl} images for self-supervised training cannot feed train.num_workers={workers} "
                         "workers (at least 2 each): use a larger pool or fewer workers.")


def _datasets(cfg: Config, pool: PoolSpec, spec: TrainSpec, workers: int) -> tuple[dict, dict]:
    """(decoded Ray Datasets: "labeled" (CE) and "unlabeled" (the pool without them, when SSL reads it);
    what the labeled read cost, `reader.read_ids`'s figures, {} without one)."""
    from ray_al.data.reader import decoded, pool_columns, read_ids, read_split

    def read(**rows):
        return decoded(read_split(pool.pool_uri, columns=pool_columns(pool), **rows), pool, cfg.data.on_corrupt)

    req = spec.request
    datasets, labeled_read = {}, {}
    if req.use_ce:  # only the row groups holding labeled ids are read
        labeled, labeled_read = read_ids(pool.pool_uri, req.labeled_ids, pool_columns(pool))
        datasets["labeled"] = decoded(labeled, pool, cfg.data.on_corrupt)
    if spec.has_unlabeled:
        datasets["unlabeled"] = read(exclude_ids=req.labeled_ids if req.use_ce else None,
                                     sample=(req.seed, spec.unlabeled_fraction))
    if _cpu_starved(workers, cfg.train.cpus_per_worker):
        # Decode now, while the CPUs are free: once the workers hold them all, Ray Data's read tasks
        # would wait forever for a CPU. The workers keep their data in memory anyway.
        datasets = {k: ds.materialize() for k, ds in datasets.items()}
    return datasets, labeled_read


def _cpu_starved(workers: int, cpus_per_worker: float) -> bool:
    """True when the training workers would hold every CPU, leaving Ray Data none to read and decode."""
    import ray

    return ray.cluster_resources().get("CPU", 0.0) - workers * cpus_per_worker < 1.0


def _trainer(cfg: Config, spec: TrainSpec, datasets: dict, storage_uri: str, workers: int):
    # the labeled set goes whole to every worker (global batches); the pool is split unless replicated.
    # One worker needs no split (and then Ray starts no SplitCoordinator actor).
    split = ["unlabeled"] if spec.request.sharding == "split" and "unlabeled" in datasets and workers > 1 else []
    return torch_trainer(cfg, train_loop_per_worker, {"spec": spec}, storage_uri, spec.request.name, workers,
                         datasets=datasets, datasets_to_split=split)


def torch_trainer(cfg: Config, loop, loop_config: dict, storage_uri: str, name: str, workers: int, *,
                  datasets: dict | None = None, datasets_to_split: list | None = None):
    """A TorchTrainer with the run's scaling, failure and checkpoint settings (per-round and resident)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    fs, path = _storage(storage_uri)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            placement_strategy="SPREAD" if workers > 1 else "PACK",
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets or {},
        dataset_config=ray.train.DataConfig(datasets_to_split=list(datasets_to_split or [])),
    )


def _outcome(result, name: str, seconds: float) -> TrainOutcome:
    """The final weights (last checkpoint), last metrics and rank 0's history from a Ray Train Result."""
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{name}' finished without a checkpoint; see the worker logs above.")
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    ret = result.return_value or {}
    return TrainOutcome(state_dict=state["model"], metrics=metrics, seconds=seconds,
                        history=list(ret.get("history", [])), nodes=list(ret.get("nodes", [])))


def _storage(uri: str):
    """Ray Train storage: (filesystem, path). Local paths must be absolute; S3 keeps our endpoint."""
    from ray_al.core import storage

    if storage.is_s3(uri):
        return storage.pyarrow_fs(uri)
    return None, os.path.abspath(uri)
