"""bench.autoswitch: switch-after-b curves and switch signals on fixed features (no Ray)."""
from __future__ import annotations

import argparse

import numpy as np

from ray_al.acquisition.policy import SwitchContext
from ray_al.bench import autoswitch, lowbudget
from tests.test_bench_lowbudget import _digits


def test_curves_match_lowbudget_and_rules_replay_them(tmp_path):
    paths = _digits(tmp_path)
    out = str(tmp_path / "trace.json")
    trace = autoswitch.main(["--features", paths["pool"], "--test", paths["test"], "--budgets", "10", "20", "30", "50",
                             "--switch-after", "10", "30", "--seeds", "0", "--start", "warm", "cold", "--out", out])
    ids, x, y = lowbudget.load(paths["pool"])
    _, tx, ty = lowbudget.load(paths["test"])
    x, tx = lowbudget.standardise(x, tx)
    data = {"x": x, "y": y, "ids": ids, "tx": tx, "ty": ty, "classes": 10}
    args = argparse.Namespace(initial=10, switch=3.0, c=1.0)
    for start in ("warm", "cold"):
        curves = trace["runs"][start][0]["curves"]
        # typiclust's trajectory is lowbudget's typiclust; switching after 30 is today's auto (3 per class)
        assert curves["never"] == lowbudget.curve("typiclust", data, [10, 20, 30, 50], 0, start, args)
        assert curves["after_30"] == lowbudget.curve("auto", data, [10, 20, 30, 50], 0, start, args)
        assert curves["after_10"][0] == curves["never"][0] and set(curves) == {"random", "never", "after_10",
                                                                               "after_30"}
    signals = trace["runs"]["warm"][0]["signals"]
    assert set(signals) == {"20", "30", "50"} and signals["30"]["per_class"] == 2.0
    assert 0 < signals["20"]["coverage"] <= signals["30"]["coverage"] <= signals["50"]["coverage"] <= 1
    assert "batch_acc" in signals["30"] and "batch_acc" not in signals["20"]
    # a rule replays from the trace: per_class >= 3 switches before the round to 50, i.e. after 30
    assert autoswitch.evaluate_rule(trace, "warm", "per_class", ">=", 3)["switches"] == ["after_30"]
    assert autoswitch.evaluate_rule(trace, "warm", "per_class", ">=", 99)["switches"] == ["never"]
    rows = autoswitch.main(["--rank", out, "--top", "3"])["rules"]
    assert rows[0]["worst_short"] <= rows[-1]["worst_short"]


def test_coverage_grows_with_the_labeled_set():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c * 10, 1, (50, 4)) for c in range(3)]).astype(np.float32)
    ctx = SwitchContext.build(x, 3)
    assert 2 < ctx.delta < 20  # the blobs' centres are 20 apart: a pure ball stays in its blob
    from ray_al.acquisition.policy import coverage

    one = np.zeros(150, bool)
    one[0] = True
    three = one.copy()
    three[[50, 100]] = True
    assert 0.2 < coverage(x, one, ctx.delta) < 0.4 < coverage(x, three, ctx.delta) <= 1
