"""Benchmark: the GPU paths against their plain references, measured in the same run (one GPU, < 8 min).

    python -m ray_al.bench.gpu               # on a GPU node: H100/H200, 16 CPU cores
    python -m ray_al.bench.gpu --dry-run     # the same code paths at toy size on CPU (tests/test_bench_gpu.py)

Three parts, each run by its own benchmark's `main` (so the code measured is the code those benches
measure, with a device option added):
1. embedding (`ray_al.bench.embed`): `ray_al.workers.embed.embed_splits` through Ray Data actors with
   `EmbedOptions(gpus_per_actor=1)` against a plain PyTorch loop on cuda, on the same Parquet rows
   (--rows CIFAR-10 JPEGs resized to --image-size, 224 px by default; --backbone defaults to the packaged
   pretrained efficientnet_lite0 where BACKBONES has it, else torchvision:resnet18, else ray_al's resnet18
   at random init: throughput only). Ratio = Ray images/s / plain images/s.
2. k-center (`ray_al.bench.kcenter`): the library's exact k-center with faiss on the GPU (`--faiss gpu`)
   at --n x --d (10,000,000 x 128), k = --k (1,000), against the plain per-step greedy (timed on
   --reference-steps steps and extrapolated to k) and its memory-bandwidth floor (k x one streaming read
   of the matrix, measured here). Ratios = floor / ours and plain greedy / ours.
3. training (`ray_al.bench.train --gpu --method moby`): a joint MoBY run under Ray Train with one GPU
   worker (train.use_gpu=true: Ray Train's torch backend is NCCL on GPUs) against the plain loop on cuda;
   2 epochs each, the first is warm-up, the second (one MoBY epoch) is timed. Ratio = Ray / plain
   images/s over that epoch.

Without --dry-run this refuses to start on a machine where torch sees no GPU. --dry-run: device cpu,
gpus_per_actor 0, faiss CPU, 128 rows at 32 px, k-center 20,000 x 16 with k = 20, 256 images for training.
Prints each part's own table and JSON, then a summary table and, as the last line, JSON with the ratios.
When no CIFAR-10 Parquet is at hand (RAY_AL_CIFAR10 or the download cache), the embedding part reads synthetic JPEGs and training the
built-in digits (the JSON says which).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ray_al.bench import embed as embed_bench
from ray_al.bench import kcenter as kcenter_bench
from ray_al.bench import train as train_bench
from ray_al.data.builtin import cifar10_dir

# The embedding's backbone: the first of these that ray_al.models.BACKBONES knows (the packaged pretrained
# EfficientNet-Lite0 and torchvision: names: README, "Pretrained backbones"), else ray_al's
# ResNet-18 (CIFAR stem: about 15x the FLOPs of torchvision's at 224 px).
PREFERRED_BACKBONES = ("efficientnet_lite0", "torchvision:resnet18", "resnet18")


def default_backbone() -> str:
    from ray_al.models.backbones import build_backbone

    for name in PREFERRED_BACKBONES[:-1]:
        try:
            build_backbone(name, 3, 224)  # built once here: a name this tree knows but cannot build is skipped
            return name
        except (KeyError, ValueError, ImportError, RuntimeError, OSError):  # unknown, torchvision missing, ...
            continue
    return PREFERRED_BACKBONES[-1]


def synthetic_source(path: str, rows: int = 2048, size: int = 32, seed: int = 0) -> str:
    """A Parquet of `rows` random-noise JPEGs in an `image` column (when the CIFAR-10 copy is absent)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(rows):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"image": pa.array(images, pa.binary())}), path)
    return path


def plan(a: argparse.Namespace, source: str, dataset: str) -> dict[str, list[str]]:
    """Each part's command line (its bench's argv)."""
    gpu = not a.dry_run
    embed = ["--rows", str(a.rows), "--backbone", a.backbone, "--image-size", str(a.image_size),
             "--batch-size", str(a.batch_size), "--cpus", str(a.cpus), "--actors", "1",
             "--cpus-per-actor", str(a.cpus_per_actor), "--source", source, "--row-group", "1024"]
    embed += ["--device", "cuda", "--gpus-per-actor", "1"] if gpu else ["--device", "cpu"]
    kcenter = ["--n", str(a.n), "--d", str(a.d), "--k", str(a.k), "--labeled", str(a.k),
               "--reference-steps", str(a.reference_steps), "--faiss", a.faiss]
    train = ["--images", str(a.images), "--epochs", "2", "--repeats", "1", "--method", "moby",
             "--backbone", a.train_backbone, "--batch-size", str(a.train_batch_size), "--threads", str(a.threads),
             "--dataset", dataset] + (["--gpu"] if gpu else [])
    return {"embed": embed, "kcenter": kcenter, "train": train}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="toy sizes on CPU: the same code paths, no GPU")
    p.add_argument("--rows", type=int, default=20000, help="embedding: images")
    p.add_argument("--backbone", default=None, help="embedding: model.backbone (default: see PREFERRED_BACKBONES)")
    p.add_argument("--image-size", type=int, default=224, help="embedding: input pixels")
    p.add_argument("--batch-size", type=int, default=256, help="embedding: batch")
    p.add_argument("--cpus", type=int, default=16, help="embedding: Ray CPUs = the plain loop's torch threads")
    p.add_argument("--cpus-per-actor", type=float, default=8.0, help="embedding: CPUs of the one GPU actor")
    p.add_argument("--n", type=int, default=10_000_000, help="k-center: pool rows")
    p.add_argument("--d", type=int, default=128, help="k-center: dimensions")
    p.add_argument("--k", type=int, default=1000, help="k-center: picks (and as many labeled centers)")
    p.add_argument("--reference-steps", type=int, default=20, help="k-center: plain greedy steps timed")
    p.add_argument("--faiss", default="gpu", choices=sorted(kcenter_bench.FAISS_BACKENDS))
    p.add_argument("--images", type=int, default=10000, help="training: CIFAR-10 images")
    p.add_argument("--train-backbone", default="resnet18")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=8, help="training: CPUs of the Ray worker = plain torch threads")
    a = p.parse_args(argv)
    a.backbone = a.backbone or default_backbone()
    if a.dry_run:
        a.rows, a.backbone, a.image_size, a.batch_size, a.cpus, a.cpus_per_actor = 128, "small_cnn", 32, 64, 2, 1.0
        a.n, a.d, a.k, a.reference_steps, a.faiss = 20000, 16, 20, 20, "cpu"
        a.images, a.train_backbone, a.train_batch_size, a.threads = 256, "small_cnn", 64, 1
    return a


def _require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("ray_al.bench.gpu needs a CUDA GPU and torch sees none here (torch.cuda.is_available() "
                         "is false). Run it on a GPU node, or pass --dry-run for the CPU check at toy size.")


def summary(parts: dict, seconds: dict) -> dict:
    e, k, t = parts["embed"], parts["kcenter"], parts["train"]
    rows = [
        ("embedding, images/s", "plain loop", e["plain_images_per_s"], "Ray Data actors", e["ray_images_per_s"],
         e["ratio"]),
        ("k-center, seconds", "bandwidth floor", k["floor_seconds"], "exact greedy", k["seconds"],
         k["speedup_vs_floor"]),
        ("k-center, seconds", "plain greedy", k["reference_seconds"], "exact greedy", k["seconds"],
         k["speedup_vs_reference"]),
        ("MoBY epoch, images/s", "plain loop", t["plain_steady_images_per_s"], "Ray Train",
         t["ray_steady_images_per_s"], t["ratio"]),
    ]
    print(f"{'part':<22}{'reference':<17}{'value':>12}  {'ours':<17}{'value':>12}{'ratio':>9}")
    for part, ref, rv, ours, ov, ratio in rows:
        print(f"{part:<22}{ref:<17}{rv:>12.4g}  {ours:<17}{ov:>12.4g}{ratio:>9.4g}")
    print("ratios: embedding and training = ours / reference (images/s); k-center = reference / ours (seconds)")
    return {"embed_ratio": e["ratio"], "kcenter_speedup_vs_floor": k["speedup_vs_floor"],
            "kcenter_speedup_vs_plain": k["speedup_vs_reference"], "train_ratio": t["ratio"],
            "train_ratio_end_to_end": t["ratio_end_to_end"], "kcenter_identical": k["identical"],
            "part_seconds": {name: round(s, 1) for name, s in seconds.items()}}


def main(argv: list[str] | None = None) -> dict:
    a = _args(argv)
    if not a.dry_run:
        _require_gpu()
    device = "cpu"
    if not a.dry_run:
        import torch

        device = torch.cuda.get_device_name(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ray_al_bench_gpu_") as work:
        source = str(cifar10_dir(download=False) / "train.parquet")  # RAY_AL_CIFAR10, else the cache
        have_cifar = Path(source).is_file()
        if not have_cifar:
            source = synthetic_source(os.path.join(work, "synthetic.parquet"))
        argvs = plan(a, source, "cifar10" if have_cifar else "digits")
        benches = {"embed": embed_bench, "kcenter": kcenter_bench, "train": train_bench}
        parts, seconds = {}, {}
        for name, argv_part in argvs.items():
            print(f"== {name}: python -m ray_al.bench.{name} {' '.join(argv_part)}", flush=True)
            t = time.perf_counter()
            parts[name] = benches[name].main(argv_part)
            seconds[name] = time.perf_counter() - t
    print(f"== summary ({'dry run on CPU' if a.dry_run else device}, {time.perf_counter() - started:.0f} s)")
    result = {"bench": "gpu", "dry_run": a.dry_run, "device": device, "data": "cifar10" if have_cifar else "synthetic",
              **summary(parts, seconds), "commands": argvs, "parts": parts}
    sys.stdout.flush()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
