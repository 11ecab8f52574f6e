"""Ray Train plumbing: `train_loop_per_worker` and the `TorchTrainer` that runs it.

The loop itself is ray_al.trainloop (plain PyTorch); this module only moves data into workers, wraps the
model for DDP, and checkpoints every epoch through `ray.train.report` so a lost worker (FailureConfig) or
a killed cycle resumes from the last epoch.
"""
from __future__ import annotations

import io as _pyio
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ray_al.config import Config
from ray_al.data.pool import PoolSpec

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainOutcome:
    state_dict: dict  # the learner's weights
    metrics: dict
    seconds: float


def learner_kwargs(cfg: Config, spec: PoolSpec, method: str | None = None) -> dict:
    return {
        "backbone": cfg.model.backbone, "num_classes": spec.num_classes, "in_channels": spec.channels,
        "image_size": spec.image_size, "mean": tuple(spec.mean), "std": tuple(spec.std),
        "ssl": cfg.train.method if method is None else method, "ssl_options": dict(cfg.train.ssl_options),
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


def _collect_shard(name: str, labels_by_id: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's whole shard in memory as (ids, uint8 pixels, labels), corrupt rows dropped."""
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
    labels = np.asarray([labels_by_id[i] for i in ids_a.tolist()], dtype=np.int64) if labels_by_id else np.zeros(0)
    return ids_a, pix_a, labels


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: load the shard, train, report metrics + a checkpoint each epoch."""
    import ray.train
    import ray.train.torch
    from ray.experimental.tqdm_ray import tqdm

    from ray_al import trainloop

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    learner = build_learner(config["learner"])
    if config.get("init_state") is not None:
        learner.load_state_dict(state_from_bytes(config["init_state"]), strict=False)
    if config["head_only"]:  # linear evaluation on frozen pre-trained features
        for p in learner.parameters():
            p.requires_grad_(False)
        for p in learner.classifier.parameters():
            p.requires_grad_(True)
    if world > 1 and config["sync_bn"]:  # global-batch BN (works on gloo/CPU, unlike torch's SyncBatchNorm)
        from ray_al.models import convert_sync_batchnorm

        learner = convert_sync_batchnorm(learner)
    objective = ray.train.torch.prepare_model(trainloop.JointObjective(learner))
    learner = (objective.module if hasattr(objective, "module") else objective).learner
    device = ray.train.torch.get_device()

    labels_by_id = dict(zip(config["labeled_ids"], config["labeled_labels"]))
    empty = np.zeros((0, 1, 1, 1), dtype=np.uint8)
    _, lx, ly = _collect_shard("labeled", labels_by_id) if config["use_ce"] else (None, empty, np.zeros(0))
    _, ux, _ = _collect_shard("unlabeled", None) if config["use_ssl"] and config["has_unlabeled"] else (None, empty, None)
    data = trainloop.TrainTensors(torch.from_numpy(lx), torch.from_numpy(ly.astype(np.int64)), torch.from_numpy(ux))
    n_steps = trainloop.steps_per_epoch(len(data.labeled_x), len(data.unlabeled_x), config["batch_size"],
                                        config["unlabeled_batch_size"], config["use_ssl"])
    if world > 1:  # every rank must take the same number of steps or DDP hangs
        n_steps = _max_across_ranks(n_steps, device)
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer, scheduler = trainloop.make_optimizer(params, config["lr"], config["momentum"],
                                                    config["weight_decay"], n_steps * config["epochs"],
                                                    tuple(config["milestones"]))
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        learner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
    bar = tqdm(total=config["epochs"], desc=config["desc"]) if rank == 0 else None
    if bar is not None and start_epoch:
        bar.update(start_epoch)
    for epoch in range(start_epoch, config["epochs"]):
        torch.manual_seed(config["seed"] * 7919 + epoch)  # dropout etc.: same after a resume
        metrics = trainloop.train_epoch(
            objective, learner, optimizer, scheduler, data, epoch=epoch, epochs=config["epochs"],
            seed=config["seed"], rank=rank, batch_size=config["batch_size"],
            unlabeled_batch_size=config["unlabeled_batch_size"], ssl_weight=config["ssl_weight"],
            use_ssl=config["use_ssl"], use_ce=config["use_ce"], n_steps=n_steps, device=device,
        )
        metrics["epoch"] = epoch
        if bar is not None:
            bar.update(1)
            bar.set_description(f"{config['desc']} loss {metrics['loss']:.3f}")
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save({"model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch},
                           os.path.join(tmp, CHECKPOINT_FILE))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    if bar is not None:
        bar.close()


def _max_across_ranks(value: int, device) -> int:
    import torch.distributed as dist

    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


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
) -> TrainOutcome:
    """Train with Ray Train's TorchTrainer. Rerunning with the same storage_uri/name resumes from the last
    epoch checkpoint (Ray Train restores the run's checkpoint snapshot)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ray_al.data.reader import decoded, pool_columns, read_split

    method = cfg.train.method if method is None else method
    use_ssl = (method != "none") if use_ssl is None else use_ssl
    datasets = {}
    if use_ce:
        datasets["labeled"] = decoded(read_split(spec.pool_uri, columns=pool_columns(spec), include_ids=labeled_ids),
                                      spec, cfg.data.on_corrupt)
    has_unlabeled = use_ssl and ssl_on_pool
    if has_unlabeled:
        datasets["unlabeled"] = decoded(read_split(spec.pool_uri, columns=pool_columns(spec),
                                                   exclude_ids=labeled_ids if use_ce else None),
                                        spec, cfg.data.on_corrupt)
    order = np.argsort(labeled_ids, kind="stable")
    config = {
        "learner": learner_kwargs(cfg, spec, method), "seed": seed, "epochs": epochs,
        "batch_size": cfg.train.batch_size, "unlabeled_batch_size": cfg.train.unlabeled_batch_size,
        "lr": cfg.train.lr, "momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay,
        "milestones": list(cfg.train.milestones), "ssl_weight": cfg.train.ssl_weight,
        "use_ce": use_ce, "use_ssl": use_ssl, "has_unlabeled": has_unlabeled, "head_only": head_only,
        "sync_bn": cfg.train.sync_bn, "desc": desc,
        "labeled_ids": labeled_ids[order].tolist(), "labeled_labels": labeled_labels[order].tolist(),
        "init_state": state_to_bytes(init_state) if init_state is not None else None,
    }
    fs, path = _storage(storage_uri)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=max(1, cfg.train.num_workers), use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            placement_strategy="SPREAD" if cfg.train.num_workers > 1 else "PACK",
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    started = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{name}' finished without a checkpoint; see the worker logs above.")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return TrainOutcome(state_dict=state["model"], metrics=metrics, seconds=time.perf_counter() - started)


def _storage(uri: str):
    """Ray Train storage: (filesystem, path). Local paths must be absolute; S3 keeps our endpoint."""
    from ray_al import io

    if io.is_s3(uri):
        return io.pyarrow_fs(uri)
    return None, os.path.abspath(uri)
