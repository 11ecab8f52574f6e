"""Benchmark: the Ray Data embedding pipeline vs a plain PyTorch loop, measured in the same run.

    python -m ray_al.bench.embed --rows 50000 --cpus 2 --backbone small_cnn --batch-size 256

Both sides do the same work on the same Parquet rows, end to end:
read the pool Parquet (`id`, encoded `image`) -> decode each image with `ray_al.data.images.decode_one`
-> the same learner (same weights, eval mode, float32 unless --dtype) -> write `id`, `embedding`, `probs`
to Parquet. Same CPU count in total: the plain loop runs in one process with `torch.set_num_threads(cpus)`
and a DataLoader with no worker processes (decoding in the loop, as a plain loop does); the Ray side runs
`ray_al.workers.embed.embed_splits` (the code the cycle runs) on a local Ray started with `num_cpus=cpus`, so its
actors x CPUs per actor (one torch thread per CPU) fit the same cores. Ray's own start (`ray.init`) is
not timed, nor is a warm-up run of each side on 1,024 rows; everything the embed step does (planning, actor
start-up, model build, reads, writes) is.

Pool: the CIFAR-10 train Parquet (RAY_AL_CIFAR10's or the download cache's train.parquet, 50,000 images), its first
--rows rows (repeated with fresh ids when --rows is larger), written with integer ids to a temporary
Parquet (row groups of --row-group rows) that both sides read.

Prints a table and, as the last line, JSON: rows, images/s of each side, their ratio (ray / plain; issue 23
asks for >= 0.9 with 2 CPUs on an idle machine), the Ray configuration, and the largest difference between the two
sides' embeddings (they must agree: same model, same pixels). Also the CPU seconds each side used (this
process and all its descendants: Ray's GCS, raylet, workers) and the load average before and after: on a
shared machine other work steals cores from both sides, and the CPU time tells overhead from contention.
"cores busy" is each side's CPU seconds over its wall seconds: a pipeline that waits shows fewer.
--repeats alternates the two sides and reports medians.

On a GPU: `--device cuda --gpus-per-actor 1 --image-size 224 --backbone resnet18` runs the plain loop on cuda
and the Ray actors with `EmbedOptions(gpus_per_actor=1)` (ray_al.bench.gpu runs it so); it refuses when
torch sees no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.bench.memwatch import descendants
from ray_al.data.builtin import CIFAR10_ENV, cifar10_dir
from ray_al.data.images import decode_one
from ray_al.data.pool import STATS, PoolSpec

IMAGE_SIZE, CHANNELS, CLASSES = 32, 3, 10


# ----------------------------------------------------------------------------------------------
# data and model


def make_pool(source: Path, rows: int, dest: str, row_group: int) -> None:
    """The first `rows` images of `source` (repeated with new ids past its end) as `id`, `image` Parquet."""
    images = pq.read_table(source, columns=["image"]).column("image")
    reps = -(-rows // len(images))
    image = pa.concat_arrays([images.combine_chunks()] * reps)[:rows] if reps > 1 else images.combine_chunks()[:rows]
    table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "image": image})
    pq.write_table(table, dest, row_group_size=row_group)


def learner_kwargs(backbone: str, image_size: int = IMAGE_SIZE) -> dict:
    mean, std = STATS["cifar10"]
    return {"backbone": backbone, "num_classes": CLASSES, "in_channels": CHANNELS, "image_size": image_size,
            "mean": mean, "std": std, "ssl": "none", "ssl_options": {}, "dropout": 0.0}


def weights(kwargs: dict, seed: int = 0) -> bytes:
    import torch

    from ray_al.models.weights import build_learner, state_to_bytes

    torch.manual_seed(seed)
    return state_to_bytes(build_learner(kwargs).state_dict())


def _fixed(matrix: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


# ----------------------------------------------------------------------------------------------
# CPU time: this machine may be shared, so wall-clock figures come with the CPU time each side used


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU seconds used by this process and every process below it (the local Ray's GCS, raylet and
    workers) during a block. Sampled every 0.2 s so that workers that exit (the actors) are counted up to
    their last sample; a worker that starts during the block counts from zero."""

    def __enter__(self) -> "CpuMeter":
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._sample(first=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _sample(self, first: bool = False) -> None:
        me = os.getpid()
        for pid in [me, *descendants(me)]:
            try:
                cpu = _proc_cpu(pid)
            except (OSError, IndexError, ValueError):
                continue
            if pid not in self._start:
                self._start[pid] = cpu if first else 0.0
            self._last[pid] = cpu

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(self._last[p] - self._start[p] for p in self._last)


# ----------------------------------------------------------------------------------------------
# the two sides


def run_plain(pool: str, out: str, blob: bytes, kwargs: dict, cpus: int, batch_size: int, dtype: str,
              device: str = "cpu") -> float:
    """A plain PyTorch loop (DataLoader over the Parquet rows, no worker processes) on `device` (cpu or
    cuda, as the Embedder's actors with gpus_per_actor > 0); returns seconds."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from ray_al.core.augment import to_model_input
    from ray_al.models.weights import build_learner, state_from_bytes

    class ParquetImages(IterableDataset):
        def __iter__(self):
            for rb in pq.ParquetFile(pool).iter_batches(batch_size=batch_size, columns=["id", "image"]):
                pixels = np.stack([decode_one(b, size, CHANNELS) for b in rb.column("image").to_pylist()])
                yield rb.column("id").to_numpy(), pixels  # (B,), (B, H, W, C) uint8; the DataLoader makes tensors

    size = kwargs["image_size"]
    torch.set_num_threads(cpus)
    started = time.perf_counter()
    model = build_learner(kwargs)
    model.load_state_dict(state_from_bytes(blob))
    model.to(device).eval()
    low = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    writer = None
    with torch.no_grad():
        for ids, pixels in DataLoader(ParquetImages(), batch_size=None, num_workers=0):
            x = to_model_input(pixels, device)  # (B, C, H, W), as the Embedder
            with torch.autocast(device, dtype=low, enabled=low != torch.float32):
                logits, feats = model(x)
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            table = pa.table({"id": pa.array(ids.numpy()), "embedding": _fixed(feats.float().cpu().numpy()),
                              "probs": _fixed(probs)})
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
    writer.close()
    return time.perf_counter() - started


def run_ray(pool: str, out: str, blob: bytes, kwargs: dict, options) -> float:
    from ray_al.data.reader import read_split, tag_split
    from ray_al.workers.embed import embed_splits

    spec = PoolSpec(pool_uri=pool, test_uri=pool, num_classes=CLASSES, class_names=tuple(map(str, range(CLASSES))),
                    image_size=kwargs["image_size"], channels=CHANNELS, mean=kwargs["mean"], std=kwargs["std"],
                    image_column="image", id_type="int64", pool_rows=0, has_labels=False)
    started = time.perf_counter()
    embed_splits(tag_split(read_split(pool, columns=["id", "image"]), "unlabeled"), blob, kwargs, spec, options, out)
    return time.perf_counter() - started


def max_difference(plain_out: str, ray_out: str) -> float:
    """Largest |difference| between the two sides' embeddings, matched by id."""
    from ray_al.core.embeddings import matrix, read_embeddings

    a = pq.read_table(plain_out).sort_by("id")
    b = read_embeddings(ray_out, "unlabeled").sort_by("id")
    if a.column("id").to_pylist() != b.column("id").to_pylist():
        raise AssertionError(f"the two sides embedded different ids ({a.num_rows} vs {b.num_rows} rows)")
    return float(np.abs(matrix(a.column("embedding")) - matrix(b.column("embedding"))).max())


def _check_gpus(device: str, gpus_per_actor: float, actors: int) -> int:
    """GPUs to give the local Ray (0 on CPU); refuses a GPU run on a machine torch sees no GPU on."""
    if device == "cpu" and gpus_per_actor == 0:
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda / --gpus-per-actor > 0: torch sees no CUDA GPU on this machine "
                         "(torch.cuda.is_available() is false); run on a GPU node or drop these options.")
    if actors * gpus_per_actor > torch.cuda.device_count():
        raise SystemExit(f"--actors {actors} x --gpus-per-actor {gpus_per_actor:g} exceeds the "
                         f"{torch.cuda.device_count()} GPU(s) torch sees")
    return torch.cuda.device_count()


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for each side (Ray num_cpus; plain torch threads)")
    p.add_argument("--actors", type=int, default=0, help="Ray actors (default: one per CPU, one torch thread each)")
    p.add_argument("--cpus-per-actor", type=float, default=0.0,
                   help="Ray's logical CPUs per actor (default: (cpus - 1) / actors, so the pool starts whole and "
                        "leaves one CPU for Ray Data's read and write tasks; workers.embed.pool_bounds)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=1, help="alternate plain/ray this many times; medians reported")
    p.add_argument("--row-group", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="pixels the model sees (images resized)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the plain loop's device")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="> 0: the Ray actors run on the GPU")
    p.add_argument("--source", default=None, help=f"CIFAR-10 train Parquet (default: {CIFAR10_ENV}'s, else the "
                   "download cache's)")
    p.add_argument("--smoke-test", action="store_true", help="2,000 rows, one repeat")
    args = p.parse_args(argv)
    args.source = args.source or str(cifar10_dir() / "train.parquet")
    if args.smoke_test:
        args.rows, args.repeats = 2000, 1
    if not Path(args.source).is_file():
        raise SystemExit(f"--source {args.source} not found: point it at a CIFAR-10 Parquet with an `image` column.")
    actors = args.actors or (max(1, int(args.cpus // args.cpus_per_actor)) if args.cpus_per_actor else args.cpus)
    args.cpus_per_actor = args.cpus_per_actor or max(args.cpus - 1, 1) / actors
    if actors * args.cpus_per_actor > args.cpus:
        raise SystemExit(f"--actors {actors} x --cpus-per-actor {args.cpus_per_actor} exceeds --cpus {args.cpus}")
    gpus = _check_gpus(args.device, args.gpus_per_actor, actors)

    import ray

    from ray_al.workers.embed import EmbedOptions

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = tempfile.mkdtemp(prefix="ray_al_bench_embed_")
    try:
        pool = os.path.join(work, "pool.parquet")
        make_pool(Path(args.source), args.rows, pool, args.row_group)
        kwargs = learner_kwargs(args.backbone, args.image_size)
        blob = weights(kwargs)
        options = EmbedOptions(batch_size=args.batch_size, actors=actors, cpus_per_actor=args.cpus_per_actor,
                               gpus_per_actor=args.gpus_per_actor, dtype=args.dtype)
        # address="local": a fresh cluster of exactly --cpus CPUs, never someone else's running one
        ray.init(address="local", num_cpus=args.cpus, num_gpus=gpus, include_dashboard=False, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        # Untimed warm-up of both sides on a small pool: first imports, Ray's pooled task workers, page
        # cache. Each timed Ray run still starts its own actors (import torch, build the model), as every
        # round's embed step does.
        warm = os.path.join(work, "warm.parquet")
        make_pool(Path(args.source), min(args.rows, 1024), warm, args.row_group)
        run_plain(warm, os.path.join(work, "warm_plain.parquet"), blob, kwargs, args.cpus, args.batch_size, args.dtype,
                  args.device)
        run_ray(warm, os.path.join(work, "warm_ray"), blob, kwargs, options)
        plain_s, ray_s, plain_cpu, ray_cpu = [], [], [], []
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both sides
            with CpuMeter() as meter:
                plain_s.append(run_plain(pool, os.path.join(work, "plain.parquet"), blob, kwargs, args.cpus,
                                         args.batch_size, args.dtype, args.device))
            plain_cpu.append(meter.seconds)
            with CpuMeter() as meter:
                ray_s.append(run_ray(pool, os.path.join(work, "ray_out"), blob, kwargs, options))
            ray_cpu.append(meter.seconds)
        load_after = os.getloadavg()[0]
        diff = max_difference(os.path.join(work, "plain.parquet"), os.path.join(work, "ray_out"))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    plain_ips, ray_ips = args.rows / statistics.median(plain_s), args.rows / statistics.median(ray_s)
    result = {
        "bench": "embed", "rows": args.rows, "backbone": args.backbone, "image_size": args.image_size,
        "device": args.device, "gpus_per_actor": args.gpus_per_actor, "batch_size": args.batch_size,
        "cpus": args.cpus, "actors": actors, "cpus_per_actor": args.cpus_per_actor, "dtype": args.dtype,
        "repeats": args.repeats, "plain_seconds": [round(s, 3) for s in plain_s],
        "ray_seconds": [round(s, 3) for s in ray_s], "plain_images_per_s": round(plain_ips, 1),
        "ray_images_per_s": round(ray_ips, 1), "ratio": round(ray_ips / plain_ips, 3),
        "plain_cpu_seconds": [round(s, 2) for s in plain_cpu], "ray_cpu_seconds": [round(s, 2) for s in ray_cpu],
        "cpu_ratio": round(statistics.median(plain_cpu) / statistics.median(ray_cpu), 3),
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)], "machine_cpus": os.cpu_count(),
        "max_abs_embedding_diff": diff,
        # cores kept busy: CPU seconds over wall seconds, the median of each side's repeats
        "plain_cores_busy": round(statistics.median(c / w for c, w in zip(plain_cpu, plain_s)), 2),
        "ray_cores_busy": round(statistics.median(c / w for c, w in zip(ray_cpu, ray_s)), 2),
    }
    print(f"{'pipeline':<28}{'seconds':>10}{'images/s':>12}{'CPU s':>10}{'CPU ms/image':>14}{'cores busy':>12}")
    for name, secs, ips, cpu, busy in (("plain PyTorch loop", plain_s, plain_ips, plain_cpu, "plain_cores_busy"),
                                       ("Ray Data (embed_splits)", ray_s, ray_ips, ray_cpu, "ray_cores_busy")):
        c = statistics.median(cpu)
        print(f"{name:<28}{statistics.median(secs):>10.2f}{ips:>12.1f}{c:>10.2f}{1000 * c / args.rows:>14.3f}"
              f"{result[busy]:>12.2f}")
    print(f"ratio ray/plain: {result['ratio']:.3f} (target >= 0.9 with 2 CPUs); CPU-time ratio plain/ray "
          f"{result['cpu_ratio']:.3f}; {actors} actor(s) x {args.cpus_per_actor} CPU; load average "
          f"{load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores; max |embedding diff| {diff:.2e}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
