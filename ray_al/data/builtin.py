"""Built-in datasets in the pool contract (`id`, `image` bytes, `label`): digits (embedded) and CIFAR-10.

No Ray here: these build small pyarrow tables the cycle writes into the run directory once.

CIFAR-10 comes, first found: from data.pool/data.test; from the folder named by RAY_AL_CIFAR10 (train.parquet
and test.parquet, or train/ and test/ image folders: how tests and benchmarks point at a local copy); from the
cache (RAY_AL_CACHE, else $XDG_CACHE_HOME/ray_al, else ~/.cache/ray_al: cifar10/{train,test}.parquet); else it
is downloaded once through torchvision into that cache and written there as Parquet.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.data.images import encode_png

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_ENV = "RAY_AL_CIFAR10"  # a folder with the CIFAR-10 splits (a local copy: tests, benchmarks, offline)


def cache_dir() -> Path:
    """Where ray_al keeps downloads: RAY_AL_CACHE, else $XDG_CACHE_HOME/ray_al, else ~/.cache/ray_al."""
    if os.environ.get("RAY_AL_CACHE"):
        return Path(os.environ["RAY_AL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ray_al"


def cifar10_dir(download: bool = True) -> Path:
    """The folder holding CIFAR-10's splits: RAY_AL_CIFAR10 when set, else the cache, downloaded into it
    through torchvision the first time (download=False: the folder, whether or not it holds them yet)."""
    if os.environ.get(CIFAR10_ENV):
        folder = Path(os.environ[CIFAR10_ENV])
        if not folder.is_dir():
            raise FileNotFoundError(f"{CIFAR10_ENV}={folder} is not a folder: point it at one holding train.parquet "
                                    "and test.parquet (or train/ and test/ image folders), or unset it to download")
        return folder
    folder = cache_dir() / "cifar10"
    if download and not all((folder / f"{split}.parquet").is_file() for split in ("train", "test")):
        _download_cifar10(folder)
    return folder


def _table(ids: np.ndarray, images: list[bytes], labels: np.ndarray, names: list[str]) -> pa.Table:
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "image": pa.array(images, pa.binary()),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array([names[int(y)] for y in labels], pa.string()),
    })


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 pixels (1797, 8, 8) and their int64 labels (1797,)."""
    images, target = _digits_file()
    # 0..16 grey levels -> 0..255 so they decode like any 8-bit image
    pixels = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return pixels, target.astype(np.int64)


def _digits_file() -> tuple[np.ndarray, np.ndarray]:
    """(images, target) as `sklearn.datasets.load_digits` gives them, read from the CSV it ships: importing
    sklearn.datasets costs a cycle ~3 s of start-up for 0.04 s of data."""
    import importlib.util

    csv = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not csv.is_file():  # another scikit-learn layout: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(csv, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1]


def digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[pa.Table, pa.Table, list[str]]:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), split into pool and test by a seeded shuffle."""
    pixels, labels = digits_pixels()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    names = [str(i) for i in range(10)]
    images = [encode_png(p) for p in pixels]

    def part(idx: np.ndarray) -> pa.Table:
        idx = np.sort(idx)
        return _table(idx.astype(np.int64), [images[i] for i in idx], labels[idx], names)

    return part(order[n_test:]), part(order[:n_test]), names


def _read_cifar_split(source: Path, split: str) -> pa.Table:
    if source.is_file():
        return pq.read_table(source)
    parquet = source / f"{split}.parquet"
    if parquet.is_file():
        return pq.read_table(parquet)
    folder = source / split
    if folder.is_dir():
        from ray_al.data.ingest import folder_table

        return folder_table(str(folder))
    raise FileNotFoundError(
        f"CIFAR-10 {split} split not found under '{source}': expected {split}.parquet or a {split}/ image folder "
        f"with class sub-folders. Point data.pool (and data.test) or {CIFAR10_ENV} at them, or unset both and run "
        "with internet access to let torchvision download it into the cache (data.pool=download forces it)."
    )


def _with_int_ids(table: pa.Table) -> pa.Table:
    if "id" not in table.column_names:
        table = table.append_column("id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table


def cifar10(pool: str = "", test: str = "") -> tuple[pa.Table, pa.Table, list[str]]:
    """CIFAR-10 from a local Parquet/image folder (columns image, label[, path]); ids are row numbers.

    Without `pool`: RAY_AL_CIFAR10, else the cache, else a torchvision download (cifar10_dir).
    `pool="download"` downloads through torchvision into the cache even when a copy exists elsewhere.
    """
    if pool == "download":
        pool = str(_download_cifar10(cache_dir() / "cifar10"))
    pool_src = Path(pool) if pool else cifar10_dir()
    test_src = Path(test) if test else (pool_src.parent if pool_src.is_file() else pool_src)
    train = _read_cifar_split(pool_src, "train")
    test_table = _read_cifar_split(test_src, "test") if test_src != pool_src or not pool_src.is_file() else None
    if test_table is None:
        raise FileNotFoundError(f"no CIFAR-10 test split next to '{pool_src}': set data.test to test.parquet.")
    return _with_int_ids(train), _with_int_ids(test_table), list(CIFAR10_CLASSES)


def _download_cifar10(folder: Path) -> Path:
    """torchvision's CIFAR-10 into `folder`, re-encoded once as {train,test}.parquet (PNG bytes); returns it."""
    from torchvision.datasets import CIFAR10

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        target = folder / f"{split}.parquet"
        if target.is_file():
            continue
        try:
            ds = CIFAR10(str(folder / "torchvision"), train=split == "train", download=True)
        except OSError as err:  # URLError included: no network, a proxy, a firewall
            raise RuntimeError(f"could not download CIFAR-10 into {folder} ({err}). Without internet access, "
                               f"set {CIFAR10_ENV} to a folder holding train.parquet and test.parquet "
                               "(or train/ and test/ image folders)") from err
        labels = np.asarray(ds.targets, dtype=np.int64)
        table = _table(np.arange(len(labels)), [encode_png(x) for x in ds.data], labels, CIFAR10_CLASSES)
        partial = folder / f".{split}.parquet.{os.getpid()}"  # renamed whole: a killed download leaves no half file
        pq.write_table(table, partial)
        os.replace(partial, target)
    return folder


def subsample(table: pa.Table, size: int, seed: int) -> pa.Table:
    """A seeded subsample of `size` rows, kept in id order (size 0 or >= rows: the table itself)."""
    if size <= 0 or size >= table.num_rows:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=size, replace=False))
    return table.take(pa.array(idx))
