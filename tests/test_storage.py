"""ray_al.core.storage on a local tmp dir and on a real S3 endpoint (moto server), checked with independent clients."""
from __future__ import annotations

import json
import os
import time
import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import storage
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    srv = request.getfixturevalue("s3")
    return srv.uri(f"io-{uuid.uuid4().hex[:8]}")


def test_join():
    assert storage.join("s3://b/x/", "a", "/b/", "c.json") == "s3://b/x/a/b/c.json"
    assert storage.join("/tmp/x", "a", "b") == os.path.join("/tmp/x", "a", "b")


def test_absolute_paths_for_workers_and_remote_uris_for_annotators(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("pool.parquet") == str(tmp_path / "pool.parquet")
    assert storage.absolute("s3://b/p") == "s3://b/p"
    assert storage.absolute("") == ""  # no test split: not the working directory, which a worker would read
    assert [storage.is_remote(u) for u in ("s3://b/x.jpg", "https://h/x.jpg", "/data/x.jpg", "x.jpg", None)] == \
        [True, True, False, False, False]


def test_bytes_text_json_roundtrip(base):
    storage.write_bytes_atomic(storage.join(base, "a", "b.bin"), b"\x00\x01payload")
    assert storage.read_bytes(storage.join(base, "a", "b.bin")) == b"\x00\x01payload"
    storage.write_text_atomic(storage.join(base, "t.txt"), "héllo")
    assert storage.read_text(storage.join(base, "t.txt")) == "héllo"
    storage.write_json_atomic(storage.join(base, "j.json"), {"x": [1, 2], "y": None})
    assert storage.read_json(storage.join(base, "j.json")) == {"x": [1, 2], "y": None}
    # overwrite replaces the whole content
    storage.write_bytes_atomic(storage.join(base, "a", "b.bin"), b"new")
    assert storage.read_bytes(storage.join(base, "a", "b.bin")) == b"new"
    assert storage.exists(storage.join(base, "a")) and storage.isdir(storage.join(base, "a"))
    assert storage.exists(storage.join(base, "a", "b.bin")) and not storage.exists(storage.join(base, "nope"))
    assert storage.listdir(base) == ["a", "j.json", "t.txt"]
    assert storage.listdir(storage.join(base, "a")) == ["b.bin"]


def test_remove_tree(base):
    storage.write_text_atomic(storage.join(base, "d", "x.txt"), "x")
    storage.write_text_atomic(storage.join(base, "d", "sub", "y.txt"), "y")
    storage.write_text_atomic(storage.join(base, "keep.txt"), "k")
    storage.remove_tree(storage.join(base, "d"))
    assert not storage.exists(storage.join(base, "d", "x.txt")) and not storage.exists(storage.join(base, "d"))
    storage.remove_tree(storage.join(base, "keep.txt"))
    assert not storage.exists(storage.join(base, "keep.txt"))
    storage.remove_tree(storage.join(base, "never-existed"))  # not an error


def test_total_bytes_of_a_file_and_of_a_tree(base):
    storage.write_bytes_atomic(storage.join(base, "d", "a.bin"), b"x" * 10)
    storage.write_bytes_atomic(storage.join(base, "d", "sub", "b.bin"), b"y" * 32)
    assert storage.total_bytes(storage.join(base, "d", "a.bin")) == 10
    assert storage.total_bytes(storage.join(base, "d")) == 42
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.total_bytes(storage.join(base, "nope"))


def test_create_exclusive_lets_one_writer_claim_a_name(base):
    uri = storage.join(base, "claims", "commit-000001.json")
    assert storage.create_exclusive(uri, b"first")
    assert not storage.create_exclusive(uri, b"second")
    assert storage.read_bytes(uri) == b"first"


def test_parquet_roundtrip(base):
    t = pa.table({"id": pa.array([3, 1, 2], pa.int64()), "s": ["a", None, "c"]})
    storage.write_parquet_atomic(storage.join(base, "t.parquet"), t)
    assert storage.read_parquet(storage.join(base, "t.parquet")).equals(t)
    assert storage.read_parquet(storage.join(base, "t.parquet"), columns=["s"]).column_names == ["s"]
    got = storage.read_parquet(storage.join(base, "t.parquet"), filters=[("id", ">", 1)])
    assert sorted(got.column("id").to_pylist()) == [2, 3]


def test_missing_paths_name_the_uri(base):
    missing = storage.join(base, "no", "such.json")
    for fn in (storage.read_bytes, storage.read_json, storage.read_parquet, storage.listdir):
        with pytest.raises(FileNotFoundError) as ei:
            fn(missing if fn is not storage.listdir else storage.join(base, "no-dir"))
        assert "not found" in str(ei.value) and base in str(ei.value)


def test_local_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    storage.write_text_atomic(str(target), "old")

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        storage.write_text_atomic(str(target), "new content")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left behind


def test_local_file_uri(tmp_path):
    storage.write_text_atomic(f"file://{tmp_path}/x.txt", "hi")
    assert (tmp_path / "x.txt").read_text() == "hi"
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/x")


def test_s3_writes_are_visible_to_an_independent_client(s3):
    uri = s3.uri("indep", "obj.json")
    storage.write_json_atomic(uri, {"a": 1})
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    body = client.get_object(Bucket=s3.bucket, Key="indep/obj.json")["Body"].read()
    assert json.loads(body) == {"a": 1}
    # and the other way round, through the fsspec (s3fs) filesystem
    client.put_object(Bucket=s3.bucket, Key="indep/from-boto.txt", Body=b"boto")
    fs, path = storage.fsspec_fs(s3.uri("indep", "from-boto.txt"))
    assert path == f"{s3.bucket}/indep/from-boto.txt"
    with fs.open(path, "rb") as f:
        assert f.read() == b"boto"
    pfs, ppath = storage.pyarrow_fs(uri)
    assert ppath == f"{s3.bucket}/indep/obj.json"
    assert pfs.get_file_info(ppath).size == len(body)


def test_s3_parquet_readable_by_pyarrow_directly(s3):
    uri = s3.uri("pq", "t.parquet")
    t = pa.table({"id": ["x", "y"]})
    storage.write_parquet_atomic(uri, t)
    fs, path = storage.pyarrow_fs(uri)
    assert pq.read_table(path, filesystem=fs).equals(t)


def test_s3_missing_bucket_message(s3):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x/ledger.json"
    with pytest.raises(FileNotFoundError) as ei:
        storage.read_json(uri)
    msg = str(ei.value)
    assert uri in msg and s3.endpoint in msg and "bucket" in msg and "credentials" in msg
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        storage.makedirs(uri.rsplit("/", 1)[0])
    assert storage.exists(uri) is False
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        storage.write_text_atomic(uri, "x")


def test_s3_unreachable_endpoint_fails_fast(s3_server, monkeypatch):
    with socket_port() as port:
        pass  # now closed: nothing listens there
    saved = dict(storage._explicit)
    monkeypatch.setenv("RAY_AL_S3_ENDPOINT", "")
    storage.configure_s3(f"http://127.0.0.1:{port}", "us-east-1")
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionError) as ei:
            storage.read_bytes(f"s3://{s3_server.bucket}/x")
        assert f"127.0.0.1:{port}" in str(ei.value) and "endpoint" in str(ei.value)
        assert time.monotonic() - t0 < 30
    finally:
        storage.configure_s3(saved["endpoint"], saved["region"])


def test_configure_s3_exports_env_for_workers(monkeypatch):
    monkeypatch.delenv("RAY_AL_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    saved = dict(storage._explicit)
    try:
        storage.configure_s3("http://minio.local:9000", "eu-west-3")
        assert os.environ["RAY_AL_S3_ENDPOINT"] == "http://minio.local:9000"
        assert storage.s3_settings() == ("http://minio.local:9000", "eu-west-3")
        storage.configure_s3(None, None)
        assert storage.s3_settings() == ("http://minio.local:9000", "eu-west-3")  # now from env
        monkeypatch.delenv("RAY_AL_S3_ENDPOINT")
        monkeypatch.delenv("AWS_REGION")
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        assert storage.s3_settings() == (None, "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://other:1")
        assert storage.s3_settings()[0] == "http://other:1"
    finally:
        storage.configure_s3(saved["endpoint"], saved["region"])


class socket_port:
    """Context manager yielding a port that was free a moment ago."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.s.close()



def test_the_cycles_driver_loads_arrow_with_the_system_pool_and_leaves_the_variable_as_it_was():
    """`python -m ray_al.cycle` imports core.arrow_pool before pyarrow loads: Arrow's C++ default pool is
    the system allocator (mimalloc kept freed pages: bench.soak's driver grew ~1.4 MiB a round), and the
    environment that Ray workers inherit is unchanged. A process that loaded pyarrow first keeps its pool."""
    import subprocess
    import sys

    script = ("import os, sys\n"
              "first = sys.argv[1] == 'pyarrow-first'\n"
              "if first: import pyarrow\n"
              "import ray_al.cycle\n"
              "import pyarrow as pa\n"
              "print(pa.default_memory_pool().backend_name, os.environ.get('ARROW_DEFAULT_MEMORY_POOL', '-'))\n")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    run = lambda order: subprocess.run([sys.executable, "-c", script, order], capture_output=True, text=True,
                                       check=True, env=env).stdout.split()
    assert run("cycle-first") == ["system", "-"]
    assert run("pyarrow-first")[0] != "system"


def test_the_cycles_driver_caps_glibc_arenas_and_leaves_the_environment_alone():
    """`python -m ray_al.cycle` caps its own malloc arenas at core.malloc_arenas.ARENAS (each new thread that
    allocates otherwise gets an arena of its own: the soak's driver grew 0.106 MiB a round, 0.043 capped);
    glibc's malloc_stats lists the arenas after eight threads have allocated. A plain Python gets more."""
    import subprocess
    import sys

    from ray_al.core.malloc_arenas import ARENAS

    script = ("import sys, threading\n"
              "if sys.argv[1] == 'cycle': import ray_al.cycle\n"
              "import ctypes, ctypes.util, os\n"
              "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
              "libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
              "hold, go = [], threading.Barrier(8)\n"
              "def grab(): go.wait(); hold.append(libc.malloc(4096))\n"
              "threads = [threading.Thread(target=grab) for _ in range(8)]\n"
              "[t.start() for t in threads]; [t.join() for t in threads]\n"
              "libc.malloc_stats()\n"
              "print(os.environ.get('MALLOC_ARENA_MAX', '-'))\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, env=env)
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines()), out.stdout.strip()

    capped, variable = arenas("cycle")
    assert 1 <= capped <= ARENAS and variable == "-"
    assert arenas("plain")[0] > ARENAS
