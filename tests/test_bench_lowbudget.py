"""bench.lowbudget: methods x budgets x seeds on fixed features with a linear probe (no Ray)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.bench import lowbudget


def _digits(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    paths = {}
    for name, rows in (("pool", order[:600]), ("test", order[1400:])):
        paths[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({"id": rows.astype(np.int64), "embedding": list(d.data[rows].astype(np.float32)),
                                 "label": d.target[rows]}), paths[name])
    return paths


def test_curves_tables_and_paired_gains(tmp_path, capsys):
    paths = _digits(tmp_path)
    report = lowbudget.main(["--features", paths["pool"], "--test", paths["test"], "--budgets", "10", "20", "40",
                             "--seeds", "0", "1", "--methods", "random", "typiclust", "auto", "--start", "warm", "cold",
                             "--switch", "3"])
    out = capsys.readouterr().out
    assert "warm start, 600 pool rows" in out and "cold start" in out
    warm, cold = report["warm"], report["cold"]
    assert set(warm) == {"random", "typiclust", "auto"} and "auc_gain" not in warm["random"]
    assert all(len(row["mean"]) == 3 and 0 < min(row["mean"]) <= max(row["mean"]) <= 100 for row in warm.values())
    # a warm start shares its first budget's labels (the same random draw) across methods
    assert warm["typiclust"]["mean"][0] == warm["random"]["mean"][0]
    # auto --switch 3 is typiclust below 3 labels per class (10 classes: below 30 labels)
    assert cold["auto"]["mean"][:2] == cold["typiclust"]["mean"][:2]
    gain = np.mean(warm["typiclust"]["mean"]) - np.mean(warm["random"]["mean"])
    assert abs(warm["typiclust"]["auc_gain"] - gain) < 0.02


def test_summarise_pairs_seeds():
    results = {"random": [[0.5, 0.6], [0.7, 0.8]], "x": [[0.6, 0.6], [0.9, 0.8]]}
    row = lowbudget.summarise(results, [10, 20])["x"]
    assert row["gain"] == [15.0, 0.0] and row["auc_gain"] == 7.5 and row["auc_gain_se"] == 2.5
