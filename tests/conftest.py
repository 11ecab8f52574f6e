"""Shared test set-up: a local Ray head per pytest process (a job on it per test module), the moto S3 server
fixture, small data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Byte-code caches written (see the Makefile): with PYTHONDONTWRITEBYTECODE every Ray worker and cycle the tests
# start compiled ray and torch anew (pytest tests/test_cycle.py -k end_to_end: 97 s with it, 44 s without).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# Local clusters use token auth by default (Ray >= 2.59); tests talk to their own cluster only.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Every Ray the tests use is their own local one (the shared head of tests/rayhead.py, a cluster a test
# builds, or one a subprocess starts), never a cluster some other process left running on this machine.
os.environ["RAY_ADDRESS"] = "local"

# The same float results on any x86-64 CPU with AVX2, so the pinned selections (tests/pinned.py) hold on
# whatever machine CI draws: oneDNN, MKL and ATen's own kernels each pick code paths by CPU, and the smoke
# cycle's picks moved on a Sapphire Rapids (AMX, AVX-512 FP16) machine against pins made on another
# (2026-12-06). Set before torch loads; Ray heads and cycles the tests start inherit them.
for _name, _value in (("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2")):
    os.environ.setdefault(_name, _value)

pytest_plugins = ["tests.s3server"]

# The longest modules (minutes each: subprocess cycles, kill drills, Ray clusters), longest first as
# measured at commit 8d3fa7c. `make test` runs two pytest workers that take whole modules in collection order;
# a long module taken last would keep one worker busy while the other idles.
LONG_MODULES = ("test_cycle.py", "test_kill_points.py", "test_train_distributed.py", "test_embed.py", "test_resident.py",
                "test_train_memory.py", "test_train.py", "test_sweep.py", "test_track.py",
                "test_job_submit.py", "test_cycle_methods.py",
                "test_kcenter_distributed.py", "test_string_ids.py", "test_bench_scale.py", "test_node_loss.py")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR10 = SHARED / "datasets" / "cifar10"
# The library finds CIFAR-10 through RAY_AL_CIFAR10 (data/builtin.py), never beside the checkout: point it at
# the local copy, for this process and the cycles it starts, instead of a torchvision download.
if CIFAR10.is_dir():
    os.environ.setdefault("RAY_AL_CIFAR10", str(CIFAR10))


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def shared_ray_head():
    """Stops the head that launched cycles join (tests/rayhead.py), if any test started it."""
    from tests import rayhead

    yield
    rayhead.stop()


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """Ray for one test module: a job of its own on the session's 2-CPU local head (tests/rayhead.py), which
    the cycles the module launches join too (modules that build multi-node clusters shut it down).

    Ray workers see the test S3 endpoint through the job's runtime env (init_ray forwards it)."""
    import ray

    from ray_al.workers.ray_utils import init_ray
    from tests.rayhead import shared_env

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_AL_S3_ENDPOINT"] = s3_server.endpoint
    os.environ.setdefault("AWS_REGION", s3_server.region)
    with pytest.MonkeyPatch.context() as env:
        for key, value in shared_env().items():
            env.setenv(key, value)
        init_ray()
        yield ray
        _no_resident_thread_left()
        ray.shutdown()


def _no_resident_thread_left() -> None:
    """A resident group's driver thread blocked in Ray while Ray shuts down can crash the whole pytest
    process (ray-project/ray#31145; CI died so): a test that starts one must close it (Cycle.close)."""
    import threading

    left = [t.name for t in threading.enumerate() if t.name == "ray_al-resident" and t.is_alive()]
    assert not left, f"{left}: a test left a resident group running; close its Cycle (Cycle.close)"


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (modules opt in with `pytest.mark.usefixtures`): tiny models and
    tensors gain nothing from threads on a 2-core box, only contention."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def single_threaded_faiss():
    """Single-threaded faiss and BLAS for a module (opt in with `pytest.mark.usefixtures`): small pools
    gain nothing from threads on a shared 2-core box, and threaded runs stall under its load."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def cifar_parquet() -> Path:
    if not (CIFAR10 / "train.parquet").is_file():
        raise FileNotFoundError(f"CIFAR-10 Parquet expected at {CIFAR10} (../shared beside the repo)")
    return CIFAR10
