"""Ray Train plumbing: `train_loop_per_worker` and the `TorchTrainer` that runs it.

The loop itself is ray_al.trainloop (plain PyTorch); this module only moves data into workers, wraps the
model for DDP, and checkpoints at the end of epochs through `ray.train.report` so a lost worker
(FailureConfig) or a killed cycle resumes from the last checkpointed epoch. An epoch checkpoint costs ~2 s
(save, report, the controller's copy), which is 100x a digits epoch: `train.checkpoint_every_s` skips
epoch checkpoints younger than that (0 = every epoch); epochs longer than it checkpoint every time, and
the last epoch always does.

Data placement (`sharding`):
* the labeled set is replicated to every worker (it is small) and sliced per global batch, so CE batches
  are those of one worker with N times the batch, and no label is lost to uneven shards;
* "split" (default): the SSL pool is a Ray Data shard per worker (`streaming_split`), which scales to
  pools larger than one worker's memory; which rows a rank gets is Ray Data's choice, so SSL batches
  differ from a 1-worker run's (same distribution, not the same rows);
* "replicate": every worker holds the whole pool and takes its slice of each global batch, so N workers
  x b train exactly the model of 1 worker x N*b (used by the equivalence test; fine for CPU-sized pools).
"""
from __future__ import annotations

import io as _pyio
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ray_al.config import Config, ConfigError
from ray_al.data.pool import PoolSpec

CHECKPOINT_FILE = "state.pt"
SHARDING = ("split", "replicate")
# DDP keyword arguments. Buffers need no per-step broadcast: BN statistics are global (GlobalBatchNorm)
# and MoBY/MoCo queues are filled with keys gathered in rank order, so they are equal on every rank;
# broadcasting two 4096 x 256 queues every forward would cost more than the step on a small model.
DDP_KWARGS = {"broadcast_buffers": False}


@dataclass
class TrainOutcome:
    state_dict: dict  # the learner's weights
    metrics: dict  # last epoch's numeric metrics (loss, ce, ssl, epoch, start_epoch, ...)
    seconds: float  # wall time of trainer.fit(), Ray Train start-up included
    history: list = field(default_factory=list)  # per-epoch metrics of rank 0's last attempt
    nodes: list = field(default_factory=list)  # node id of each rank, in rank order


def ssl_defaults(method: str, spec: PoolSpec) -> dict:
    """Options we set on top of the papers' defaults; explicit train.ssl_options win.

    * single-channel pools (the built-in digits, handwriting, scans): no horizontal flips in the views,
      since a mirrored glyph is another glyph or none (colour pools keep the papers' flips);
    * barlow_twins: the loss starts near proj_dim (512), far above the CE it is added to, so it is scaled
      by 1/32 as in the first Barlow Twins reference code (`scale-loss`); without it SGD at lr 0.05
      diverges in the first steps of the joint objective.
    """
    if method == "none":
        return {}
    out: dict = {}
    if spec.channels == 1:
        out["flip"] = False
    if method == "barlow_twins":
        out["scale"] = 1.0 / 32.0
    return out


def learner_kwargs(cfg: Config, spec: PoolSpec, method: str | None = None) -> dict:
    method = cfg.train.method if method is None else method
    return {
        "backbone": cfg.model.backbone, "num_classes": spec.num_classes, "in_channels": spec.channels,
        "image_size": spec.image_size, "mean": tuple(spec.mean), "std": tuple(spec.std),
        "ssl": method, "ssl_options": {**ssl_defaults(method, spec), **dict(cfg.train.ssl_options)},
        "dropout": cfg.model.dropout,
    }


def build_learner(kwargs: dict) -> torch.nn.Module:
    from ray_al.models import JointLearner

    return JointLearner(**kwargs)


def state_to_bytes(state: dict) -> bytes:
    buf = _pyio.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict:
    return torch.load(_pyio.BytesIO(data), map_location="cpu", weights_only=True)


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


def _freeze_unused(learner: torch.nn.Module, head_only: bool, use_ce: bool, use_ssl: bool) -> None:
    """Parameters no loss touches take no gradient: DDP (find_unused_parameters=False) would wait for
    their gradients forever, and the optimiser should not decay them."""
    if head_only:  # linear evaluation on frozen pre-trained features
        for p in learner.parameters():
            p.requires_grad_(False)
        for p in learner.classifier.parameters():
            p.requires_grad_(True)
        return
    if not use_ce:
        for p in learner.classifier.parameters():
            p.requires_grad_(False)
    if not use_ssl and learner.ssl is not None:
        for p in learner.ssl.parameters():
            p.requires_grad_(False)


def _fault_hook(config: dict, epoch: int, rank: int):
    """Test/chaos hook: SIGKILL this worker at (epoch, step) on one rank, once (a marker file remembers).

    It first waits `delay_s` so the controller has collected the previous epoch's report (Ray Train
    polls workers every 2 s); a real crash earlier than that resumes one epoch further back.
    """
    fault = config.get("fault_injection")
    if not fault or fault["epoch"] != epoch or fault.get("rank", 0) != rank:
        return None

    def on_step(step: int) -> None:
        if step != fault.get("step", 0) or os.path.exists(fault["marker"]):
            return
        with open(fault["marker"], "w") as f:
            f.write(f"killed rank {rank} pid {os.getpid()} at epoch {epoch} step {step}\n")
        time.sleep(float(fault.get("delay_s", 5.0)))
        os.kill(os.getpid(), signal.SIGKILL)

    return on_step


def _all_gather_strings(value: str, world: int) -> list[str]:
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


def train_loop_per_worker(config: dict) -> dict:
    """Runs in every Ray Train worker: load the data, train, report metrics + a checkpoint each epoch.
    Returns (rank 0's becomes Result.return_value) this attempt's per-epoch history and the placement."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.experimental.tqdm_ray import tqdm

    from ray_al import trainloop

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one line per checkpoint
    try:  # Train v2 logs every report at INFO under a logger named by its file path
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    nodes = _all_gather_strings(ray.get_runtime_context().get_node_id(), world)
    torch.manual_seed(config["seed"])  # same initial weights and queues on every rank
    learner = build_learner(config["learner"])
    if config.get("init_state") is not None:
        learner.load_state_dict(state_from_bytes(config["init_state"]), strict=False)
    _freeze_unused(learner, config["head_only"], config["use_ce"], config["use_ssl"])
    if world > 1 and config["sync_bn"]:  # global-batch BN (works on gloo/CPU, unlike torch's SyncBatchNorm)
        from ray_al.models import convert_sync_batchnorm

        learner = convert_sync_batchnorm(learner)
    objective = ray.train.torch.prepare_model(trainloop.JointObjective(learner),
                                              parallel_strategy_kwargs=dict(DDP_KWARGS))
    learner = (objective.module if hasattr(objective, "module") else objective).learner
    device = ray.train.torch.get_device()

    labels_by_id = dict(zip(config["labeled_ids"], config["labeled_labels"]))
    empty = np.zeros((0, 1, 1, 1), dtype=np.uint8)
    no_ids = np.zeros(0, np.int64)
    lid, lx, ly = _collect("labeled", labels_by_id) if config["use_ce"] else (no_ids, empty, no_ids)
    uid, ux, _ = (_collect("unlabeled", None) if config["use_ssl"] and config["has_unlabeled"]
                  else (no_ids, empty, None))
    data = trainloop.TrainTensors(
        torch.from_numpy(lx), torch.from_numpy(ly.astype(np.int64)), torch.from_numpy(ux),
        labeled_keys=torch.from_numpy(trainloop.ids_to_keys(lid)),
        unlabeled_keys=torch.from_numpy(trainloop.ids_to_keys(uid)),
    )
    ssl_global = config["sharding"] == "replicate" or world == 1
    n_ssl = len(data.ssl_source(world, rank, ssl_global)[0]) if config["use_ssl"] else 0
    n_steps = trainloop.steps_per_epoch(len(lx), n_ssl, config["batch_size"], config["unlabeled_batch_size"],
                                        config["use_ssl"], world=world, ssl_global=ssl_global, ce=config["use_ce"])
    if world > 1 and not ssl_global:  # every rank must take the same number of steps or DDP hangs
        n_steps = _max_across_ranks(n_steps, device)
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer, scheduler = trainloop.make_optimizer(params, config["lr"], config["momentum"],
                                                    config["weight_decay"], n_steps * config["epochs"],
                                                    tuple(config["milestones"]), config["optimizer"],
                                                    config["lr_schedule"])
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        learner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
    bar = tqdm(total=config["epochs"], desc=config["desc"]) if rank == 0 and config["progress"] else None
    if bar is not None and start_epoch:
        bar.update(start_epoch)
    history = []
    last_checkpoint = time.monotonic()
    for epoch in range(start_epoch, config["epochs"]):
        torch.manual_seed((config["seed"] * 7919 + epoch) * 1009 + rank)  # dropout: same after a resume
        started = time.perf_counter()
        metrics = trainloop.train_epoch(
            objective, learner, optimizer, scheduler, data, epoch=epoch, epochs=config["epochs"],
            seed=config["seed"], rank=rank, batch_size=config["batch_size"],
            unlabeled_batch_size=config["unlabeled_batch_size"], ssl_weight=config["ssl_weight"],
            use_ssl=config["use_ssl"], use_ce=config["use_ce"], n_steps=n_steps, device=device,
            world=world, ssl_global=ssl_global, on_step=_fault_hook(config, epoch, rank),
        )
        if world > 1:
            metrics = _reduce_metrics(metrics, device)
        metrics.update(epoch=epoch, start_epoch=start_epoch, steps=n_steps, threads=torch.get_num_threads(),
                       train_seconds=time.perf_counter() - started)
        if bar is not None:
            bar.update(1)
            bar.set_description(f"{config['desc']} loss {metrics['loss']:.3f}")
        started = time.perf_counter()
        if _checkpoint_due(last_checkpoint, config["checkpoint_every_s"], epoch == config["epochs"] - 1,
                           world, device):
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    torch.save({"model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch},
                               os.path.join(tmp, CHECKPOINT_FILE))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
            last_checkpoint = time.monotonic()
        history.append({**metrics, "report_seconds": time.perf_counter() - started})
    if bar is not None:
        bar.close()
        sys.stdout.flush()  # the close travels as a stdout line: send it before the worker exits
    return {"history": history, "nodes": nodes, "start_epoch": start_epoch}


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


def _cpu_starved(workers: int, cpus_per_worker: float) -> bool:
    """True when the training workers would hold every CPU, leaving Ray Data none to read and decode."""
    import ray

    return ray.cluster_resources().get("CPU", 0.0) - workers * cpus_per_worker < 1.0


def fit(
    cfg: Config,
    spec: PoolSpec,
    *,
    labeled_ids: np.ndarray,
    labeled_labels: np.ndarray,
    storage_uri: str,
    name: str,
    seed: int,
    epochs: int,
    use_ce: bool = True,
    use_ssl: bool | None = None,
    ssl_on_pool: bool = True,
    head_only: bool = False,
    init_state: dict | None = None,
    method: str | None = None,
    desc: str = "train",
    sharding: str | None = None,
    fault_injection: dict | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train with Ray Train's TorchTrainer. Rerunning with the same storage_uri/name resumes from the last
    epoch checkpoint (Ray Train restores the run's checkpoint snapshot).

    sharding: "split" | "replicate" (module docstring); None reads `cfg.train.sharding` if the config has
    it, else "split". fault_injection: {"epoch", "step", "rank", "marker", "delay_s"} kills that worker
    once (tests and failure drills; see `_fault_hook`).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from ray_al.data.reader import decoded, pool_columns, read_split

    method = cfg.train.method if method is None else method
    use_ssl = (method != "none") if use_ssl is None else use_ssl
    if use_ssl and method == "none":
        raise ValueError("use_ssl=True needs an SSL method (train.method), not 'none'.")
    sharding = sharding or getattr(cfg.train, "sharding", "split")
    if sharding not in SHARDING:
        raise ConfigError(f"sharding='{sharding}' is not valid; choose one of {', '.join(SHARDING)}.")
    workers = max(1, cfg.train.num_workers)
    labeled_ids = np.asarray(labeled_ids)
    has_unlabeled = use_ssl and ssl_on_pool
    n_ssl = (len(labeled_ids) if use_ce else 0) + (spec.pool_rows - (len(labeled_ids) if use_ce else 0)
                                                    if has_unlabeled else 0)
    _check_sizes(len(labeled_ids), n_ssl, workers, cfg.train.batch_size, use_ce, use_ssl)
    datasets = {}
    if use_ce:
        datasets["labeled"] = decoded(read_split(spec.pool_uri, columns=pool_columns(spec), include_ids=labeled_ids),
                                      spec, cfg.data.on_corrupt)
    if has_unlabeled:
        datasets["unlabeled"] = decoded(read_split(spec.pool_uri, columns=pool_columns(spec),
                                                   exclude_ids=labeled_ids if use_ce else None),
                                        spec, cfg.data.on_corrupt)
    if _cpu_starved(workers, cfg.train.cpus_per_worker):
        # Decode now, while the CPUs are free: once the workers hold them all, Ray Data's read tasks
        # would wait forever for a CPU. The workers keep their data in memory anyway.
        datasets = {k: ds.materialize() for k, ds in datasets.items()}
    order = np.argsort(labeled_ids, kind="stable")
    config = {
        "learner": learner_kwargs(cfg, spec, method), "seed": seed, "epochs": epochs,
        "batch_size": cfg.train.batch_size, "unlabeled_batch_size": cfg.train.unlabeled_batch_size,
        # pre-training (SSL only, no labels) may have its own lr, as the SSL papers tune it separately
        "lr": cfg.train.pretrain_lr if not use_ce and cfg.train.pretrain_lr > 0 else cfg.train.lr,
        "optimizer": cfg.train.optimizer, "lr_schedule": cfg.train.lr_schedule, "momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay,
        "milestones": list(cfg.train.milestones), "ssl_weight": cfg.train.ssl_weight,
        "use_ce": use_ce, "use_ssl": use_ssl, "has_unlabeled": has_unlabeled, "head_only": head_only,
        "sync_bn": cfg.train.sync_bn, "checkpoint_every_s": cfg.train.checkpoint_every_s, "desc": desc,
        "sharding": sharding, "progress": progress,
        "labeled_ids": labeled_ids[order].tolist(), "labeled_labels": np.asarray(labeled_labels)[order].tolist(),
        "init_state": state_to_bytes(init_state) if init_state is not None else None,
        "fault_injection": fault_injection,
    }
    fs, path = _storage(storage_uri)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
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
        datasets=datasets,
        # the labeled set goes whole to every worker (global batches); the pool is split unless replicated
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["unlabeled"] if sharding == "split" and "unlabeled" in datasets else []),
    )
    started = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{name}' finished without a checkpoint; see the worker logs above.")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    ret = result.return_value or {}
    return TrainOutcome(state_dict=state["model"], metrics=metrics, seconds=time.perf_counter() - started,
                        history=list(ret.get("history", [])), nodes=list(ret.get("nodes", [])))


def _storage(uri: str):
    """Ray Train storage: (filesystem, path). Local paths must be absolute; S3 keeps our endpoint."""
    from ray_al import io

    if io.is_s3(uri):
        return io.pyarrow_fs(uri)
    return None, os.path.abspath(uri)
