"""Built-in datasets in the pool contract (`id`, `image` bytes, `label`): digits (embedded) and CIFAR-10.

No Ray here: these build small pyarrow tables the cycle writes into the run directory once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.data.images import encode_png

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Where our machines keep the CIFAR-10 Parquet (tests and CPU-sized runs); users may pass data.pool instead.
SHARED_CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar10"


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
        "with class sub-folders. Point data.pool (and data.test) at them, or run with internet access to let "
        "torchvision download it (data.pool=download)."
    )


def _with_int_ids(table: pa.Table) -> pa.Table:
    if "id" not in table.column_names:
        table = table.append_column("id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table


def cifar10(pool: str = "", test: str = "") -> tuple[pa.Table, pa.Table, list[str]]:
    """CIFAR-10 from a local Parquet/image folder (columns image, label[, path]); ids are row numbers.

    `pool="download"` uses torchvision's downloader (needs internet) and encodes the images as PNG.
    """
    if pool == "download":
        return _cifar10_download()
    pool_src = Path(pool) if pool else SHARED_CIFAR10
    test_src = Path(test) if test else (pool_src.parent if pool_src.is_file() else pool_src)
    train = _read_cifar_split(pool_src, "train")
    test_table = _read_cifar_split(test_src, "test") if test_src != pool_src or not pool_src.is_file() else None
    if test_table is None:
        raise FileNotFoundError(f"no CIFAR-10 test split next to '{pool_src}': set data.test to test.parquet.")
    return _with_int_ids(train), _with_int_ids(test_table), list(CIFAR10_CLASSES)


def _cifar10_download() -> tuple[pa.Table, pa.Table, list[str]]:
    from torchvision.datasets import CIFAR10

    root = Path.home() / ".cache" / "ray_al" / "cifar10"
    parts = []
    for train in (True, False):
        ds = CIFAR10(str(root), train=train, download=True)
        labels = np.asarray(ds.targets, dtype=np.int64)
        parts.append(_table(np.arange(len(labels)), [encode_png(x) for x in ds.data], labels, CIFAR10_CLASSES))
    return parts[0], parts[1], list(CIFAR10_CLASSES)


def subsample(table: pa.Table, size: int, seed: int) -> pa.Table:
    """A seeded subsample of `size` rows, kept in id order (size 0 or >= rows: the table itself)."""
    if size <= 0 or size >= table.num_rows:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=size, replace=False))
    return table.take(pa.array(idx))
