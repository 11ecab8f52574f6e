"""Built-in CIFAR-10 found like any library's (data/builtin.py): data.pool, RAY_AL_CIFAR10, the download
cache; never a path beside the checkout. No Ray, no download (these machines have no internet)."""
from __future__ import annotations

import io as pyio
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_al.data import builtin

REPO = Path(__file__).resolve().parents[1]


def _split(folder: Path, split: str, n: int) -> None:
    images = []
    for i in range(n):
        buf = pyio.BytesIO()
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": pa.array(np.arange(n) % 10, pa.int64())}),
                   folder / f"{split}.parquet")


@pytest.fixture
def no_cifar_env(monkeypatch, tmp_path):
    monkeypatch.delenv(builtin.CIFAR10_ENV, raising=False)
    monkeypatch.setenv("RAY_AL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_the_environment_variable_names_the_local_copy(no_cifar_env, monkeypatch):
    copy = no_cifar_env / "copy"
    _split(copy, "train", 12)
    _split(copy, "test", 5)
    monkeypatch.setenv(builtin.CIFAR10_ENV, str(copy))
    train, test, names = builtin.cifar10()
    assert (train.num_rows, test.num_rows) == (12, 5) and names == builtin.CIFAR10_CLASSES
    assert train.column("id").to_pylist() == list(range(12))  # ids are row numbers
    assert builtin.cifar10_dir() == copy


def test_the_cache_is_read_without_downloading(no_cifar_env, monkeypatch):
    cached = no_cifar_env / "cache" / "cifar10"
    _split(cached, "train", 7)
    _split(cached, "test", 3)
    monkeypatch.setattr(builtin, "_download_cifar10", lambda folder: pytest.fail("downloaded despite the cache"))
    train, test, _ = builtin.cifar10()
    assert (train.num_rows, test.num_rows) == (7, 3)


def test_cache_location_follows_the_environment(no_cifar_env, monkeypatch):
    assert builtin.cifar10_dir(download=False) == no_cifar_env / "cache" / "cifar10"
    monkeypatch.delenv("RAY_AL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_cifar_env / "xdg"))
    assert builtin.cache_dir() == no_cifar_env / "xdg" / "ray_al"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert builtin.cache_dir() == Path.home() / ".cache" / "ray_al"


def test_refused_sources_say_what_to_set(no_cifar_env, monkeypatch):
    monkeypatch.setenv(builtin.CIFAR10_ENV, str(no_cifar_env / "missing"))
    with pytest.raises(FileNotFoundError, match=r"RAY_AL_CIFAR10=.*missing is not a folder"):
        builtin.cifar10()
    empty = no_cifar_env / "empty"
    empty.mkdir()
    monkeypatch.setenv(builtin.CIFAR10_ENV, str(empty))
    with pytest.raises(FileNotFoundError, match=r"train split not found.*RAY_AL_CIFAR10"):
        builtin.cifar10()
    only_train = no_cifar_env / "one.parquet"
    _split(no_cifar_env, "one", 3)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 test split next to"):
        builtin.cifar10(str(only_train), str(only_train))


def test_the_library_reads_nothing_beside_the_checkout():
    """`grep -rn shared ray_al/` may find the word, never a path to the checkout's neighbours."""
    neighbour = re.compile(r"\.\./shared|/work/shared|[\"']shared[\"']\s*/|/\s*[\"']shared[\"']|parents\[[3-9]\]")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in sorted((REPO / "ray_al").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if neighbour.search(line)]
    assert hits == []


def test_a_download_that_cannot_reach_the_network_says_what_to_set(no_cifar_env, monkeypatch):
    """torchvision's URLError becomes an error naming RAY_AL_CIFAR10 (a proxy on a closed loopback port:
    the download fails at once, with or without internet)."""
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(RuntimeError, match=f"could not download CIFAR-10 .*set {builtin.CIFAR10_ENV} to a folder"):
        builtin.cifar10()
    assert not list((no_cifar_env / "cache" / "cifar10").glob("*.parquet"))  # no half-written split
