"""The driver's peak memory of `strategy_input` (the in-process PoolView path) is about one copy of the
unlabeled split: the matrices it returns plus a file's batches, never the split as an Arrow table besides them.
Measured in a fresh subprocess by numpy's (tracemalloc) and Arrow's (memory pool) peak allocations.
Measured here: 10.9 MB beyond the matrices at 20k and at 200k rows; the read before it, 40 and 89 MB."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core.embeddings import fixed_list

D, C = 64, 10
ROWS_PER_FILE = 5_000  # the embedding step writes files of bounded size, whatever the pool

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import pyarrow as pa
    from ray_al.core import config
    from ray_al.loop.selection import strategy_input

    cfg = config.load(None, [])  # select.method=auto, select.shards=1: in-process, no Ray
    labels = {-1 - i: i % 10 for i in range(50)}
    tracemalloc.start()  # numpy's buffers (and Python's); Arrow's buffers: its memory pool's peak
    view = strategy_input(cfg, sys.argv[1], labels, 0)
    numpy_peak = tracemalloc.get_traced_memory()[1]
    held = sum(a.nbytes for a in (view.ids, view.probs, view.embeddings))
    import ray
    print(json.dumps({"numpy_peak": numpy_peak, "arrow_peak": pa.default_memory_pool().max_memory(),
                      "held": held, "n": len(view.ids), "ray": ray.is_initialized()}))
    """
)


def _peaks(uri: str) -> dict:
    """Peak bytes of numpy (tracemalloc) and of Arrow (its pool's high-water mark) while strategy_input reads
    `uri` in a fresh process: allocator counts, not RSS, so the figure does not move from run to run."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, uri], capture_output=True, text=True,
                         timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_pool(root, n: int, sharpen: float = 1.0, gap: float = 0.0) -> str:
    """split=unlabeled: n rows in files of ROWS_PER_FILE, every 100th undecodable; split=labeled: 50 rows.
    sharpen > 1 makes the probabilities peaked (a confident model); gap > 0 puts the rows of each class
    (id % C; labeled id -1 - i: class i % C, as the scripts label them) around their own centre."""
    rng = np.random.default_rng(n)
    centres = np.random.default_rng(1).standard_normal((C, D)).astype(np.float32)
    for split, ids, parts in (("unlabeled", np.arange(n), n // ROWS_PER_FILE), ("labeled", -1 - np.arange(50), 1)):
        (root / f"split={split}").mkdir(parents=True)
        for i, rows in enumerate(np.array_split(ids, parts)):
            m = len(rows)
            probs = rng.random((m, C), dtype=np.float32) ** np.float32(sharpen)
            classes = np.where(rows >= 0, rows, -1 - rows) % C
            pq.write_table(pa.table({
                "id": pa.array(rows, pa.int64()),
                "embedding": fixed_list(rng.standard_normal((m, D), dtype=np.float32) + gap * centres[classes]),
                "probs": fixed_list(probs / probs.sum(1, keepdims=True)),
                "corrupt": pa.array(rows % 100 == 7),
            }), root / f"split={split}" / f"part-{i}.parquet")
    return str(root)


def test_strategy_input_peaks_at_about_one_copy_of_the_pool(tmp_path):
    small, big = (_peaks(_write_pool(tmp_path / name, n)) for name, n in (("small", 20_000), ("big", 200_000)))
    assert not big["ray"]  # select.shards=1 reads in the driver, without Ray
    assert big["n"] == 200_000 - 2_000  # the undecodable rows dropped
    # beyond the matrices it returns (~60 MB at 200k), the read holds a few batches, whatever the pool:
    # the split as a whole Arrow table besides the matrices (the old read, filter and combine_chunks) is
    # one to two more copies
    extra = {name: r["numpy_peak"] + r["arrow_peak"] - r["held"] for name, r in (("20k", small), ("200k", big))}
    assert extra["200k"] < 0.25 * big["held"], (extra, big)
    assert extra["200k"] - extra["20k"] < 0.25 * (big["held"] - small["held"]), (extra, small, big)


_SELECT_SCRIPT = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import pyarrow as pa
    from ray_al.core import config
    from ray_al.run.ledger import Ledger
    from ray_al.loop.selection import choose_queries

    cfg = config.load(None, sys.argv[2:])
    ledger = Ledger.empty().add([-1 - i for i in range(50)], [i % 10 for i in range(50)], 0, "initial",
                                num_classes=10)
    tracemalloc.start()
    chosen = choose_queries(cfg, sys.argv[1], ledger, 20, 1)
    print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory(),
                      "method": chosen.method, "k": len(chosen.ids)}))
    """
)


def _select_peak(uri: str, *overrides: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _SELECT_SCRIPT, uri, *overrides], capture_output=True, text=True,
                         timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_method_that_reads_only_probabilities_never_loads_the_embeddings(tmp_path, monkeypatch):
    """`auto` past its switch runs margin, which reads class probabilities only: the driver must not load
    the n x d embedding matrix for it (at d=512, ten million rows would be 20 GB for nothing). The
    embedding-reading method on the same files shows the measurement can tell."""
    monkeypatch.setattr(sys.modules[__name__], "D", 512)
    uri = _write_pool(tmp_path / "pool", 20_000)
    matrix_bytes = 20_000 * 512 * 4
    late = _select_peak(uri, "select.auto_switch_per_class=1")  # 5 labels per class: margin
    early = _select_peak(uri, "select.auto_switch_per_class=100")  # typiclust, on the embeddings
    assert (late["method"], early["method"]) == ("margin", "typiclust") and late["k"] == early["k"] == 20
    assert late["peak"] < 0.25 * matrix_bytes < matrix_bytes < early["peak"], (late, early, matrix_bytes)


def test_the_data_rule_decides_on_a_sample_whatever_the_pool(tmp_path, monkeypatch):
    """The default `auto` reads its switch from a probe fitted on the labeled rows and scored on a seeded sample
    of PROBE_SAMPLE unlabeled rows (gathered file by file); where the probe is confident the round is margin.
    A 10x pool adds its n x C probabilities and little else: not its n x d matrix. (The first call also
    imports scikit-learn, the same at both sizes.)"""
    monkeypatch.setattr(sys.modules[__name__], "D", 256)
    peaks, matrices = [], []
    for n in (20_000, 200_000):
        sure = _select_peak(_write_pool(tmp_path / f"sure{n}", n, sharpen=30.0, gap=4.0))
        assert sure["method"] == "margin" and sure["k"] == 20, sure
        peaks.append(sure["peak"])
        matrices.append(n * D * 4)
    assert peaks[1] - peaks[0] < 0.25 * (matrices[1] - matrices[0]), (peaks, matrices)
    assert peaks[1] < 0.6 * matrices[1], (peaks, matrices)
