"""Cycle pieces that need no Ray: zero-shot prefixes, budget checks, the results report."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ray_al import config
from ray_al.cycle import BudgetError, Cycle, check_budget
from ray_al.embed import _fixed_list
from ray_al.ledger import Ledger
from ray_al.report import area_under_curve, format_table, plot_learning_curves
from ray_al.rundir import RunDir
from ray_al.select import kcenter_greedy


def test_zero_shot_budgets_are_prefixes_of_one_saved_order(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 4)).astype(np.float32)
    seed_feats = rng.normal(size=(3, 4)).astype(np.float32)
    ids = np.arange(100, 160)
    run = RunDir.create(str(tmp_path / "run"), {"num_classes": 2, "id_type": "int64"})
    cyc = Cycle.__new__(Cycle)
    cyc.run, cyc.seed = run, 0
    table = pa.table({"id": pa.array(ids), "embedding": _fixed_list(feats)})
    first = cyc._zero_shot_prefix(table, seed_feats, Ledger.empty("int64"), 5)
    expected = ids[kcenter_greedy(feats, 60, labeled_features=seed_feats)].tolist()
    assert first == expected[:5]
    # next round: labeled ids are skipped, the order is read back, not recomputed from new features
    ledger = Ledger.empty("int64").add(first, [0] * 5, 1, "query", num_classes=2)
    shuffled = pa.table({"id": pa.array(ids[::-1]), "embedding": _fixed_list(feats[::-1] * 3)})
    assert cyc._zero_shot_prefix(shuffled, seed_feats, ledger, 5) == expected[5:10]


def test_budget_larger_than_pool_is_refused():
    cfg = config.load(None, ["al.initial_size=10", "al.rounds=3", "al.budget=40"])
    check_budget(cfg, 130)
    with pytest.raises(BudgetError, match=r"needs 130 labels.*only 129 images"):
        check_budget(cfg, 129)


def test_report_table_auc_and_plot(tmp_path):
    rows = [{"round": r, "labels": 10 * (r + 1), "accuracy": 0.5 + 0.1 * r, "method": "m", "select": "s",
             "seconds": {"train": 1.0, "embed": 2.0}} for r in range(3)]
    text = format_table(rows)
    assert text.splitlines()[2].split()[:3] == ["0", "10", "0.5000"] and "-" in text.splitlines()[2]
    assert area_under_curve([10, 20, 30], [0.5, 0.6, 0.7]) == pytest.approx(0.6)
    out = plot_learning_curves(rows + [dict(r, accuracy=r["accuracy"] + 0.02) for r in rows], str(tmp_path / "c.png"))
    assert open(out, "rb").read(4) == b"\x89PNG"
