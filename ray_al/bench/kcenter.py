"""Benchmark: exact batched k-center greedy vs the plain per-step greedy, measured in the same run.

    python -m ray_al.bench.kcenter --n 1000000 --d 128 --k 1000 --labeled 1000 --shards 1

Prints a table and, as the last line, JSON with: seconds (ours, end to end), passes over the features,
round trips, the memory-bandwidth floor of plain greedy (k x the time of one streaming read of the
feature matrix, measured here), the time of a plain per-step greedy reference (one full distance column
per step, as common CoreSet implementations do; same chunked faiss init as ours, same exact tie rule),
peak memory (process RSS high-water mark during our selection, features included) and whether the two
selections are identical. --reference-steps R < k times the reference on its first R steps only and
extrapolates linearly (the output says so; identity is then checked on that prefix).

Data: a clustered Gaussian mixture (default; embedding-like) or iid Gaussian, float32, generated in
chunks; --labeled L extra labeled vectors from the same distribution are the initial centers.
Shards are in-process (`--shards S`): the same driver that runs over Ray actors in distributed.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time

import numpy as np

from ray_al.acquisition.geometry import error_bound, exact_min_sqdist, sqnorms32
from ray_al.acquisition.kcenter_greedy import (
    DEFAULT_CHUNK_ROWS,
    KCenterOptions,
    _argmax_lowest,
    kcenter_greedy_run,
    nonfinite_scan,
    resolve_use_gpu,
    update_min_sqdist,
)


# ----------------------------------------------------------------------------------------------
# data


def make_data(n: int, d: int, labeled: int, seed: int, kind: str = "clustered", clusters: int = 100):
    """(features (n, d) float32, labeled_features (labeled, d) float32), generated chunk by chunk.

    clustered: a mixture of `clusters` Gaussians (means N(0, I), spreads 0.3..0.7, Dirichlet(2) weights),
    embedding-like; gaussian: iid N(0, I).
    """
    if kind not in ("clustered", "gaussian"):
        raise ValueError(f"--data must be 'clustered' or 'gaussian', got {kind!r}")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((clusters, d), dtype=np.float32)  # (C, d)
    scales = rng.uniform(0.3, 0.7, clusters).astype(np.float32)  # (C,)
    weights = rng.dirichlet(np.full(clusters, 2.0))  # (C,)

    def fill(out: np.ndarray) -> np.ndarray:
        for s in range(0, out.shape[0], DEFAULT_CHUNK_ROWS):
            block = out[s : s + DEFAULT_CHUNK_ROWS]  # (chunk, d) view
            rng.standard_normal(out=block, dtype=np.float32)
            if kind == "clustered":
                lab = rng.choice(clusters, size=block.shape[0], p=weights)
                block *= scales[lab, None]
                block += means[lab]
        return out

    x = fill(np.empty((n, d), np.float32))
    lf = fill(np.empty((labeled, d), np.float32))
    return x, lf


# ----------------------------------------------------------------------------------------------
# measurements


class PeakRSS:
    """Process RSS high-water mark over a block (resets the kernel's VmHWM; falls back to sampling)."""

    def __enter__(self) -> "PeakRSS":
        self.sampled = 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._hwm = True
        except OSError:
            self._hwm = False
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._sample, daemon=True)
            self._t.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _status_kb("VmRSS") * 1024)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self._hwm:
            self.peak = _status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._t.join()
            self.peak = self.sampled


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def streaming_read_seconds(x: np.ndarray, repeats: int = 5) -> float:
    """Fastest time of one full read of x: min over repeats of a matrix-vector product and a sum."""
    v = np.ones(x.shape[1], np.float32)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        x @ v
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
        np.add.reduce(x, axis=0)
        best = min(best, time.perf_counter() - t)
    return best


def plain_greedy(
    x: np.ndarray, k: int, labeled_features: np.ndarray | None, seed: int, steps: int | None = None,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, float, float]:
    """Plain per-step greedy: one full distance column (GEMV over all n rows) per pick.

    Same initial chunked faiss nearest-center search as ours and the same exact tie rule (the few
    contenders within the float32 error bound of the max get exact values), so both select the same.
    Returns (picks, seconds for init, seconds for the `steps` picks).
    """
    t0 = time.perf_counter()
    n, d = x.shape
    use_gpu = resolve_use_gpu(use_gpu)
    _, max_norm = nonfinite_scan(x)
    lf = labeled_features if labeled_features is not None and len(labeled_features) else None
    if lf is not None:
        max_norm = max(max_norm, nonfinite_scan(lf)[1])
    err = error_bound(d, max_norm)
    xx = np.empty(n, np.float32)  # (n,)
    dmin = np.full(n, np.inf, np.float32)  # (n,)
    for s in range(0, n, DEFAULT_CHUNK_ROWS):
        xx[s : s + DEFAULT_CHUNK_ROWS] = sqnorms32(x[s : s + DEFAULT_CHUNK_ROWS])
    if lf is not None:
        update_min_sqdist(x, lf, dmin, use_gpu=use_gpu)  # the same chunked nearest-center search as ours
    centers = np.empty(((0 if lf is None else lf.shape[0]) + k, d), np.float32)  # (L + k, d)
    centers_sq = np.empty(centers.shape[0], np.float32)
    m = 0
    if lf is not None:
        centers[: lf.shape[0]] = lf
        centers_sq[: lf.shape[0]] = sqnorms32(lf)
        m = lf.shape[0]
    t_init = time.perf_counter() - t0
    t1 = time.perf_counter()
    picks = []
    for step in range(k if steps is None else min(k, steps)):
        if step == 0 and m == 0:
            j = int(np.random.default_rng(seed).integers(n))  # cold start, as in kcenter_greedy
        else:
            top = float(dmin.max())
            cont = np.flatnonzero(dmin >= top - 2 * err)  # every point that may hold the exact max
            v = exact_min_sqdist(x[cont], centers[:m], err, centers_sq=centers_sq[:m])
            j = int(cont[_argmax_lowest(v, cont)])
        picks.append(j)
        c = x[j]
        centers[m] = c
        centers_sq[m] = c @ c
        m += 1
        col = x @ c  # (n,) the full distance column: |x|^2 + |c|^2 - 2 x.c
        col *= -2.0
        col += xx
        col += centers_sq[m - 1]
        np.minimum(dmin, col, out=dmin)
        dmin[j] = -np.inf
    return np.asarray(picks, np.int64), t_init, time.perf_counter() - t1


def _sig(v: float) -> float:
    """4 significant digits: toy sizes (bench.gpu --dry-run) give ratios and floors far below 0.01."""
    return float(f"{v:.4g}")


FAISS_BACKENDS = {"auto": None, "cpu": False, "gpu": True}  # --faiss -> use_gpu


def run_ours(x: np.ndarray, lf: np.ndarray | None, a: argparse.Namespace):
    """The library's exact k-center on the bench's options: the one call to adapt if its signature moves."""
    return kcenter_greedy_run(x, a.k, None, a.seed, labeled_features=lf,
                              options=KCenterOptions(shards=a.shards, batch=a.batch, storage=a.storage,
                                                     use_gpu=FAISS_BACKENDS[a.faiss]))


# ----------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--labeled", type=int, default=1000, help="extra labeled vectors (initial centers); 0 = cold start")
    p.add_argument("--shards", type=int, default=1, help="in-process shards driven by the same exact driver")
    p.add_argument("--batch", type=int, default=None, help="candidates per shard per round (default adaptive)")
    p.add_argument("--data", default="clustered", choices=["clustered", "gaussian"])
    p.add_argument("--storage", default="float32", choices=["float32", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faiss", default="auto", choices=sorted(FAISS_BACKENDS),
                   help="faiss backend of both sides' nearest-center searches (auto: GPU when faiss sees one)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="time the plain greedy on this many steps and extrapolate to k (default: all k)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes (CI)")
    a = p.parse_args(argv)
    if a.smoke_test:
        a.n, a.d, a.k, a.labeled = 5000, 16, 50, 20

    t = time.perf_counter()
    x, lf = make_data(a.n, a.d, a.labeled, a.seed, a.data)
    t_data = time.perf_counter() - t
    feat_bytes = x.nbytes

    reads = [streaming_read_seconds(x)]  # re-measured after each run: the floor is the fastest read seen

    load_start = os.getloadavg()[0]
    cpu0 = time.process_time()
    with PeakRSS() as mem:
        run = run_ours(x, lf if a.labeled else None, a)
    ours, st = run.picks, run.stats
    ours_cpu = time.process_time() - cpu0
    reads.append(streaming_read_seconds(x))
    ref_steps = a.k if a.reference_steps is None else min(a.k, a.reference_steps)
    ref_x = x if a.storage == "float32" else x.astype(np.float16).astype(np.float32)
    cpu0 = time.process_time()
    ref, ref_init, ref_loop = plain_greedy(ref_x, a.k, lf if a.labeled else None, a.seed, ref_steps,
                                           FAISS_BACKENDS[a.faiss])
    ref_cpu = time.process_time() - cpu0
    extrapolated = ref_steps < a.k
    ref_s = ref_init + ref_loop * (a.k / max(1, ref_steps))
    identical = bool(np.array_equal(ours[: len(ref)], ref))
    reads.append(streaming_read_seconds(x))
    read_s = min(reads)
    floor_s = a.k * read_s
    load_end = os.getloadavg()[0]

    rows = [
        ("exact batched greedy (ours)", st["seconds"], st["passes"], st["round_trips"], f"{mem.peak / 2**20:.0f} MiB"),
        (f"plain per-step greedy{' (extrapolated from %d steps)' % ref_steps if extrapolated else ''}",
         ref_s, a.k + (2 if a.labeled else 1), a.k, "-"),
        ("memory-bandwidth floor (k x one read)", floor_s, a.k, "-", "-"),
    ]
    print(f"n={a.n} d={a.d} k={a.k} labeled={a.labeled} shards={a.shards} data={a.data} storage={a.storage} "
          f"faiss={a.faiss} "
          f"(data generated in {t_data:.1f}s; one streaming read of {feat_bytes / 2**20:.0f} MiB: "
          f"{read_s * 1e3:.1f} ms)")
    print(f"{'method':<52}{'seconds':>10}{'passes':>8}{'trips':>7}{'peak mem':>11}")
    for name, sec, passes, trips, peak in rows:
        print(f"{name:<52}{sec:>10.2f}{passes:>8}{trips!s:>7}{peak:>11}")
    print(f"identical selection: {identical}{' (on the first %d picks)' % ref_steps if extrapolated else ''}; "
          f"speed-up vs plain greedy {ref_s / st['seconds']:.1f}x, "
          f"vs its bandwidth floor {floor_s / st['seconds']:.1f}x; "
          f"peak memory {mem.peak / feat_bytes:.2f}x the feature matrix; rounds {st['rounds']}, "
          f"steps per round {st['steps_per_round'][:12]}{'...' if len(st['steps_per_round']) > 12 else ''}")
    print(f"CPU seconds (all threads): ours {ours_cpu:.1f}, plain greedy {ref_cpu:.1f}"
          f"{' (measured steps only)' if extrapolated else ''}; machine load average {load_start:.1f} at the start, "
          f"{load_end:.1f} at the end (other processes share these cores: wall times vary with them)")
    out = {
        "n": a.n, "d": a.d, "k": a.k, "labeled": a.labeled, "shards": a.shards, "data": a.data,
        "storage": a.storage, "faiss": a.faiss, "seconds": round(st["seconds"], 3), "passes": st["passes"],
        "round_trips": st["round_trips"], "rounds": st["rounds"],
        "floor_seconds": _sig(floor_s), "read_seconds": _sig(read_s),
        "reference_seconds": round(ref_s, 3), "reference_init_seconds": round(ref_init, 3),
        "reference_extrapolated": extrapolated, "reference_steps": ref_steps,
        "speedup_vs_reference": _sig(ref_s / st["seconds"]),
        "speedup_vs_floor": _sig(floor_s / st["seconds"]),
        "peak_memory_bytes": int(mem.peak), "feature_bytes": int(feat_bytes),
        "peak_memory_ratio": round(mem.peak / feat_bytes, 3), "identical": identical,
        "cpu_seconds": round(ours_cpu, 3), "reference_cpu_seconds": round(ref_cpu, 3),
        "load_average": [round(load_start, 2), round(load_end, 2)],
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
