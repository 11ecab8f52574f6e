"""bench.select at test size: selection-only cycles on a generated data.embeddings file, each in its own
process as users run them, the random reference first, kcenter on a shard actor (how a split is cut into
files that several actors share: tests/test_user_embeddings.py)."""
from __future__ import annotations

from ray_al.bench import select as bench_select


def test_each_method_selects_and_its_memory_is_reported(tmp_path):
    report = bench_select.main(["--rows", "3000", "--dim", "8", "--clusters", "6", "--methods", "typiclust",
                                "kcenter", "--shards", "2", "--initial", "20", "--budget", "10",
                                "--out", str(tmp_path)])
    methods = report["methods"]
    assert list(methods) == ["random", "typiclust", "kcenter"]
    for name, res in methods.items():
        assert "error" not in res, res.get("error")
        assert res["selected_by"] == name and res["heap_mib"]["cycle_driver"] > 0
    assert methods["kcenter"]["heap_mib"]["shard_actor"] > 0 and methods["typiclust"]["heap_mib"]["shard_actor"] == 0
    assert "driver_heap_above_reference_vs_matrix" in methods["typiclust"]
