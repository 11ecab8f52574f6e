"""A sweep's result tables (ray_al.core.report, pure, no Ray): the summary maths against numpy, the text
and CSV tables, and the Parquet table of rows whose grid values mix types."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_al.core.report import (
    csv_text,
    flat_row,
    format_per_budget,
    format_summary,
    parquet_bytes,
    per_budget,
    results_table,
    setting_keys,
    summarize,
    sweep_summary,
)


def test_summary_matches_numpy(tmp_path):
    grid = {"select.method": ["a", "b"], "al.seed": [0, 1]}
    rng = np.random.default_rng(0)
    rows, acc = [], {}
    for method in ("a", "b"):
        for seed in (0, 1):
            labels = np.array([10, 20, 40])
            accuracy = np.sort(rng.uniform(0.2, 0.9, 3))
            acc[(method, seed)] = (labels, accuracy)
            rows += [{"trial": f"{method}{seed}", "select.method": method, "al.seed": seed, "round": r,
                      "labels": int(labels[r]), "accuracy": float(accuracy[r])} for r in range(3)]
    per_trial, per_setting = summarize(rows, grid)
    assert len(per_trial) == 4 and len(per_setting) == 2
    for s in per_setting:
        runs = [acc[(s["select.method"], seed)] for seed in (0, 1)]
        aucs = [np.trapezoid(a, x) / (x[-1] - x[0]) for x, a in runs]
        finals = [a[-1] for _, a in runs]
        assert s["seeds"] == 2 and s["final_labels"] == 40
        assert s["final_accuracy_mean"] == pytest.approx(np.mean(finals))
        assert s["final_accuracy_std"] == pytest.approx(np.std(finals))
        assert s["auc_mean"] == pytest.approx(np.mean(aucs)) and s["auc_std"] == pytest.approx(np.std(aucs))
        assert s["auc_se"] == pytest.approx(np.std(aucs, ddof=1) / np.sqrt(2))
    table = per_budget(rows, grid)
    assert [(t["select.method"], t["labels"]) for t in table] == [(m, n) for m in "ab" for n in (10, 20, 40)]
    for t in table:
        at = [acc[(t["select.method"], seed)][1][[10, 20, 40].index(t["labels"])] for seed in (0, 1)]
        assert t["seeds"] == 2 and t["accuracy_mean"] == pytest.approx(np.mean(at))
        assert t["accuracy_se"] == pytest.approx(np.std(at, ddof=1) / np.sqrt(2))
    text = format_per_budget(table, grid).splitlines()
    b40 = next(t for t in table if t["select.method"] == "b" and t["labels"] == 40)
    assert text[1].split() == ["select.method", "10", "20", "40"]
    assert text[-1].split()[0] == "b" and text[-1].split()[-1] == f"{b40['accuracy_mean']:.3f}+-{b40['accuracy_se']:.3f}"


def two_seed_rows() -> tuple[list[dict], dict]:
    grid = {"select.method": ["a", "b"], "al.seed": [0, 1], "train.seed_offset": [0]}
    rows = [{"trial": f"{m}{s}", "select.method": m, "al.seed": s, "train.seed_offset": 0, "round": r,
             "labels": 10 * (r + 1), "accuracy": 0.5 + 0.1 * r + (0.05 if m == "b" else 0.0) + 0.01 * s,
             "seconds": {"train": 1.5, "embed": 0.5}}
            for m in "ab" for s in (0, 1) for r in range(2)]
    return rows, grid


def test_seed_keys_are_averaged_over_and_named_per_trial() -> None:
    rows, grid = two_seed_rows()
    assert setting_keys(grid) == ["select.method"]
    per_trial, per_setting = summarize(rows, grid)
    assert sorted(t["seed"] for t in per_trial) == ["0,0", "0,0", "1,0", "1,0"]
    b = next(s for s in per_setting if s["select.method"] == "b")
    assert b["seeds"] == 2 and b["final_labels"] == 20 and b["final_accuracy_mean"] == pytest.approx(0.655)
    assert b["final_accuracy_std"] == pytest.approx(0.005)


def test_text_and_csv_tables_hold_every_setting() -> None:
    rows, grid = two_seed_rows()
    per_trial, per_setting = summarize(rows, grid)
    text = format_summary(per_trial, per_setting, grid).splitlines()
    assert text[0].startswith("per trial") and len([ln for ln in text if ln.strip().startswith(("a ", "b "))]) == 6
    assert "0.6550 +- 0.0050" in text[-1] and text[-1].split()[0] == "b"
    summary_txt, summary_csv = sweep_summary(rows, grid)
    assert summary_txt.startswith("\n".join(text)) and format_per_budget(per_budget(rows, grid), grid) in summary_txt
    lines = summary_csv.splitlines()
    assert lines[0].split(",")[:3] == ["select.method", "seeds", "final_labels"] and len(lines) == 3


def test_results_table_flattens_seconds_and_keeps_mixed_grid_values_as_text() -> None:
    rows = [{"trial": "t1", "train.lr": 0.1, "round": 0, "labels": 10, "accuracy": 0.5, "seconds": {"train": 2}},
            {"trial": "t2", "train.lr": "auto", "round": 0, "labels": 10, "accuracy": 0.6}]
    assert flat_row(rows[0]) == {"trial": "t1", "train.lr": 0.1, "round": 0, "labels": 10, "accuracy": 0.5,
                                 "seconds_train": 2.0}
    table = results_table(rows)
    assert table.column("train.lr").to_pylist() == ["0.1", "auto"]
    assert table.column("seconds_train").to_pylist() == [2.0, None]
    assert pq.read_table(io.BytesIO(parquet_bytes(rows))).equals(table)
    numbers = results_table([{"x": 1}, {"x": 0.5}])  # ints and floats stay numbers
    assert numbers.column("x").to_pylist() == [1.0, 0.5]
    assert csv_text([{"a": 1}, {"b": 2}]).splitlines() == ["a,b", "1,", ",2"]


def test_gains_on_random_are_paired_by_seed_and_setting() -> None:
    from ray_al.core.report import format_paired_gains, paired_gains

    grid = {"al.initial": ["random", "auto"], "select.method": ["random", "typiclust"], "al.seed": [0, 1]}
    acc = {("random", "random"): [[0.2, 0.3], [0.4, 0.5]], ("random", "typiclust"): [[0.25, 0.4], [0.40, 0.6]],
           ("auto", "random"): [[0.3, 0.3], [0.3, 0.3]], ("auto", "typiclust"): [[0.3, 0.5], [0.3, 0.4]]}
    rows = [{"al.initial": init, "select.method": method, "al.seed": seed, "labels": labels, "accuracy": a,
             "round": r, "trial": f"{init}-{method}-{seed}"}
            for (init, method), seeds in acc.items() for seed, curve in enumerate(seeds)
            for r, (labels, a) in enumerate(zip((10, 20), curve))]
    gains = {g["al.initial"]: g["gains"] for g in paired_gains(rows, grid)}
    assert set(gains) == {"random", "auto"}  # typiclust's rows only: random is the reference
    mean, se, n = gains["random"][20]  # per seed: 0.4 - 0.3, 0.6 - 0.5 (not across seeds or initial sets)
    assert (mean, n) == (pytest.approx(10.0), 2) and se == pytest.approx(0.0)
    assert gains["auto"][20][:2] == (pytest.approx(15.0), pytest.approx(5.0))  # +20 and +10 on auto's own random
    assert gains["random"]["mean"][0] == pytest.approx(np.mean([(5.0 + 10.0) / 2, (0.0 + 10.0) / 2]))
    text = format_paired_gains(paired_gains(rows, grid), grid)
    assert "random / typiclust" in text and "+15.0+-5.0" in text
    assert paired_gains(rows, {"select.method": ["typiclust"], "al.seed": [0, 1]}) == []
