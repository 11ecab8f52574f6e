"""`python -m ray_al.bench.gpu`: --dry-run runs the GPU check's code paths (Ray Data embedding actors, exact
k-center, a MoBY epoch under Ray Train, each against its plain reference) at toy size on CPU, as a user runs
it (a subprocess with its own local Ray); without --dry-run and without a GPU it refuses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_al.bench.gpu", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "RAY_ADDRESS": "local"})


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_dry_run_prints_every_part_and_positive_ratios() -> None:
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["bench"] == "gpu" and res["dry_run"] and res["device"] == "cpu"
    for key in ("embed_ratio", "kcenter_speedup_vs_floor", "kcenter_speedup_vs_plain", "train_ratio"):
        assert res[key] > 0, (key, res[key])
    assert res["kcenter_identical"]  # the exact greedy picks what the plain greedy picks
    embed, kcenter, train = res["parts"]["embed"], res["parts"]["kcenter"], res["parts"]["train"]
    # each part ran its own bench on the dry run's sizes and devices
    assert embed["rows"] == 128 and embed["device"] == "cpu" and embed["gpus_per_actor"] == 0
    assert embed["max_abs_embedding_diff"] < 1e-3
    assert (kcenter["n"], kcenter["d"], kcenter["k"], kcenter["faiss"]) == (20000, 16, 20, "cpu")
    assert train["method"] == "moby" and not train["gpu"] and train["ray_steady_images_per_s"] > 0
    assert set(res["part_seconds"]) == {"embed", "kcenter", "train"}
    out = proc.stdout
    for name in ("embed", "kcenter", "train"):
        assert f"== {name}: python -m ray_al.bench.{name}" in out
    table = out[out.index("== summary"):]
    for row in ("embedding, images/s", "k-center, seconds", "MoBY epoch, images/s"):
        assert row in table


@pytest.mark.skipif(_has_cuda(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu() -> None:
    proc = _run("--n", "100", timeout=120)
    assert proc.returncode != 0
    assert "torch.cuda.is_available() is false" in proc.stderr and "--dry-run" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
def test_gpu_run_reports_ratios() -> None:
    proc = _run(timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["dry_run"] and res["parts"]["embed"]["gpus_per_actor"] == 1 and res["parts"]["train"]["gpu"]
    assert res["embed_ratio"] > 0 and res["kcenter_speedup_vs_floor"] > 0 and res["train_ratio"] > 0
