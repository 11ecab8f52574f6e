"""Benchmark: one Ray Train worker vs a plain PyTorch loop on the same data, measured in the same run.

    python -m ray_al.bench.train --images 4096 --epochs 4 --threads 1 --batch-size 64

Both sides train the same learner (same kwargs, same seed, so the same initial weights) with the same
loop (`ray_al.models.trainloop.train_epoch`) on the same in-memory uint8 images (a CIFAR-10 subsample written
as a pool by `ray_al.data.pool.prepare`), same batch size, same optimiser, same torch thread count:
* plain: this process, `torch.set_num_threads(--threads)`, images decoded here;
* Ray: `ray_al.workers.train.fit` (the code the cycle runs) with one worker of `--threads` CPUs (Ray gives a
  worker as many torch threads as CPUs) on a local Ray started with exactly --threads + 1 CPUs.

Figures (images/s = images fed through the model, labeled + SSL inputs, over the epochs counted):
* steady state: epochs 2.. only (epoch 1 warms up), `train_epoch` time only, timed inside each loop;
  the Ray row's second figure adds the per-epoch checkpoint + `ray.train.report`;
* end to end: every epoch over the whole wall time: plain = decode + model build + training; Ray =
  `trainer.fit()` (controller and worker start-up, Ray Data read + decode, training, checkpoints).
The ratio (last-line JSON `ratio`) is Ray steady state / plain steady state; the issue asks >= 0.9.
--repeats R alternates plain and Ray R times and reports medians. `ray.init` itself is not timed.
--gpu: train.use_gpu=true (one GPU worker; Ray Train's torch backend is NCCL) and the plain loop on cuda.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np


def _load_pool(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, uint8 pixels (N, H, W, C), labels) of the pool, decoded in this process, sorted by id."""
    import pyarrow.parquet as pq

    from ray_al.data.images import decode_batch

    table = pq.read_table(spec.pool_uri, columns=["id", "image", "label"])
    batch = {"id": table.column("id").to_numpy(), "image": np.asarray(table.column("image").to_pylist(), dtype=object)}
    out = decode_batch(batch, spec.image_size, spec.channels)
    order = np.argsort(out["id"], kind="stable")
    labels = table.column("label").to_numpy()
    return out["id"][order], np.ascontiguousarray(out["pixels"][order]), labels[order]


def run_plain(cfg, spec, epochs: int, threads: int, seed: int, device: str = "cpu") -> dict:
    import torch

    from ray_al.models import trainloop as tl
    from ray_al.models.weights import build_learner, learner_kwargs

    torch.set_num_threads(threads)
    started = time.perf_counter()
    ids, pixels, labels = _load_pool(spec)
    torch.manual_seed(seed)  # as the Ray worker does before building the learner
    learner = build_learner(learner_kwargs(cfg, spec)).to(device)
    use_ssl = cfg.train.method != "none"
    data = tl.TrainTensors(torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64)),
                           torch.zeros((0, *pixels.shape[1:]), dtype=torch.uint8),
                           torch.from_numpy(tl.ids_to_keys(ids)), torch.zeros(0, dtype=torch.int64))
    n_steps = tl.steps_per_epoch(len(pixels), len(pixels) if use_ssl else 0, cfg.train.batch_size,
                                 cfg.train.unlabeled_batch_size, use_ssl)
    plan = tl.EpochPlan(seed=seed, epochs=epochs, n_steps=n_steps, batch_size=cfg.train.batch_size,
                        unlabeled_batch_size=cfg.train.unlabeled_batch_size, ssl_weight=cfg.train.ssl_weight,
                        use_ssl=use_ssl, device=device)
    optimizer, scheduler = tl.make_optimizer(learner.trainable_parameters(), cfg.train.lr, cfg.train.momentum,
                                             cfg.train.weight_decay, n_steps * epochs, tuple(cfg.train.milestones),
                                             cfg.train.optimizer, cfg.train.lr_schedule)
    state = tl.TrainState(tl.JointObjective(learner), learner, optimizer, scheduler)
    history = []
    for epoch in range(epochs):
        torch.manual_seed((seed * 7919 + epoch) * 1009)  # as the Ray worker of rank 0
        t = time.perf_counter()
        m = tl.train_epoch(state, data, plan, epoch)
        history.append({**m, "train_seconds": time.perf_counter() - t, "report_seconds": 0.0})
    total = time.perf_counter() - started
    return {"history": history, "wall_seconds": total, "threads": torch.get_num_threads(),
            "loss": history[-1]["loss"]}


def run_ray(cfg, spec, epochs: int, seed: int, storage: str, name: str) -> dict:
    from ray_al.data.pool import read_labels
    from ray_al.workers.train import TrainRequest, fit

    ids, labels = read_labels(spec.pool_uri)
    out = fit(cfg, spec, TrainRequest(name=name, labeled_ids=np.asarray(ids), labeled_labels=np.asarray(labels),
                                      seed=seed, epochs=epochs, progress=False), storage_uri=storage)
    return {"history": out.history, "wall_seconds": out.seconds, "threads": out.history[0].get("threads"),
            "loss": out.metrics["loss"]}


def _rates(run: dict) -> dict:
    steady = run["history"][1:]
    imgs = sum(h["images"] for h in steady)
    train_s = sum(h["train_seconds"] for h in steady)
    with_report = train_s + sum(h["report_seconds"] for h in steady)
    all_imgs = sum(h["images"] for h in run["history"])
    return {"steady": imgs / train_s, "steady_with_checkpoints": imgs / with_report,
            "end_to_end": all_imgs / run["wall_seconds"], "steady_images": imgs, "steady_seconds": train_s,
            "wall_seconds": run["wall_seconds"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096, help="CIFAR-10 images (labeled set = all of them)")
    p.add_argument("--epochs", type=int, default=4, help="epoch 1 is warm-up; the rest are timed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the plain loop = CPUs of the Ray worker")
    p.add_argument("--method", default="none", help="train.method (none = supervised; moby = joint MoBY)")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--repeats", type=int, default=2, help="alternate plain / Ray this many times; medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", action="store_true",
                   help="train.use_gpu=true (Ray Train on one GPU, NCCL backend); the plain loop on cuda")
    p.add_argument("--dataset", default="cifar10", help="data.dataset of the pool (cifar10 or digits)")
    p.add_argument("--smoke-test", action="store_true", help="512 images, 2 epochs, 1 repeat")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.images, args.epochs, args.repeats = 512, 2, 1
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2: the first epoch is warm-up and not timed")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is false)")

    import ray

    from ray_al.core import config as config_mod
    from ray_al.data.pool import prepare

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    cfg = config_mod.load(None, [
        f"data.dataset={args.dataset}", f"data.pool_size={args.images}", "data.test_size=10",
        f"model.backbone={args.backbone}", f"train.method={args.method}", f"train.batch_size={args.batch_size}",
        f"train.unlabeled_batch_size={args.batch_size}", "train.num_workers=1", f"train.cpus_per_worker={args.threads}",
        "train.max_failures=0", f"train.use_gpu={str(args.gpu).lower()}",
    ])
    work = tempfile.mkdtemp(prefix="ray_al_bench_train_")
    try:
        spec = prepare(cfg.data, work, args.seed)
        # one spare CPU for Ray Data and the controller
        os.environ["RAY_ADDRESS"] = "local"  # a fresh cluster, never someone else's
        from ray_al.workers.ray_utils import init_ray

        init_ray(num_cpus=args.threads + 1)  # with the dashboard: Ray Train's placement-group cleaner needs it
        plain, ray_runs = [], []
        for r in range(args.repeats):
            plain.append(run_plain(cfg, spec, args.epochs, args.threads, args.seed, "cuda" if args.gpu else "cpu"))
            ray_runs.append(run_ray(cfg, spec, args.epochs, args.seed, os.path.join(work, "ray_train"), f"bench_{r}"))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pr = [_rates(x) for x in plain]
    rr = [_rates(x) for x in ray_runs]

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratio = med(rr, "steady") / med(pr, "steady")
    result = {
        "bench": "train", "images": args.images, "epochs": args.epochs, "timed_epochs": args.epochs - 1,
        "batch_size": args.batch_size, "method": args.method, "gpu": args.gpu, "dataset": args.dataset, "backbone": args.backbone, "threads": args.threads,
        "ray_worker_threads": ray_runs[0]["threads"], "repeats": args.repeats,
        "plain_steady_images_per_s": round(med(pr, "steady"), 1),
        "ray_steady_images_per_s": round(med(rr, "steady"), 1),
        "ray_steady_with_checkpoints_images_per_s": round(med(rr, "steady_with_checkpoints"), 1),
        "plain_end_to_end_images_per_s": round(med(pr, "end_to_end"), 1),
        "ray_end_to_end_images_per_s": round(med(rr, "end_to_end"), 1),
        "plain_wall_seconds": [round(x["wall_seconds"], 2) for x in pr],
        "ray_wall_seconds": [round(x["wall_seconds"], 2) for x in rr],
        "ratio": round(ratio, 3),
        "ratio_end_to_end": round(med(rr, "end_to_end") / med(pr, "end_to_end"), 3),
        "final_loss_plain": round(plain[0]["loss"], 6), "final_loss_ray": round(ray_runs[0]["loss"], 6),
    }
    print(f"{'':<34}{'steady img/s':>14}{'+checkpoints':>14}{'end-to-end img/s':>18}{'wall s':>9}")
    print(f"{'plain PyTorch loop':<34}{med(pr, 'steady'):>14.1f}{'-':>14}{med(pr, 'end_to_end'):>18.1f}"
          f"{med(pr, 'wall_seconds'):>9.1f}")
    print(f"{'Ray Train, 1 worker':<34}{med(rr, 'steady'):>14.1f}{med(rr, 'steady_with_checkpoints'):>14.1f}"
          f"{med(rr, 'end_to_end'):>18.1f}{med(rr, 'wall_seconds'):>9.1f}")
    print(f"ratio ray/plain, steady state: {ratio:.3f} (target >= 0.9); end to end incl. Ray Train start-up: "
          f"{result['ratio_end_to_end']:.3f}. {args.threads} thread(s) each (Ray worker: "
          f"{result['ray_worker_threads']}); same loss: plain {result['final_loss_plain']:.6f} "
          f"ray {result['final_loss_ray']:.6f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
