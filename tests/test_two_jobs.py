"""Two users on one cluster (docs/RELIABILITY.md, the "two users' cycles" row): two `ray job submit` cycles at
once on one
`ray start --head`, one run directory local, one `s3://` on the suite's moto server. Both must succeed, and
each ledger and results file must equal the same run done alone on that head (submitted first).

ray_al names no Ray actor (`grep -n "name=\\|get_actor\\|namespace" ray_al/workers/*.py`, 2026-12-06: only
Ray Train run names, whose storage is under each run's own directory), so nothing is shared by name; the
test checks that neither run's files mention the other's directory.
"""
from __future__ import annotations

import json
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray_al.bench.overhead import JOB_EXCLUDES, LocalHead
from ray_al.core import storage
from ray_al.run.ledger import Ledger
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--smoke-test", "al.rounds=1"]


def _submit(head: LocalHead, runtime_env: dict, run_dir: str) -> tuple[int, str]:
    proc = head.submit(REPO, runtime_env, [sys.executable, "-m", "ray_al.cycle", *ARGS, f"run.dir={run_dir}"],
                       timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _ledger(run_uri: str) -> list[tuple]:
    table = Ledger.load(run_uri).table
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "label", "round", "source"))))


def _results(run_uri: str) -> list[dict]:
    """results.jsonl without the timings (the only field two equal runs may differ in)."""
    rows = [json.loads(line) for line in storage.read_text(storage.join(run_uri, "results.jsonl")).splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _texts(run_uri: str) -> dict[str, bytes]:
    fs, root = storage.fsspec_fs(run_uri)
    return {key: fs.cat_file(key) for key in fs.find(root)}


def test_two_jobs_at_once_on_one_head_equal_each_run_done_alone(s3, tmp_path):
    alone, local = str(tmp_path / "alone"), str(tmp_path / "local")
    remote = s3.uri(f"runs/two-{uuid.uuid4().hex[:8]}")
    runtime_env = {"env_vars": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "RAY_AL_S3_ENDPOINT": s3.endpoint, "AWS_REGION": s3.region},
                   "excludes": JOB_EXCLUDES}
    head = LocalHead(REPO, cpus=4)  # logical CPUs: both jobs' train and embed workers fit at once
    try:
        head.wait_ready()
        first = _submit(head, runtime_env, alone)
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda d: _submit(head, runtime_env, d), [local, remote]))
    finally:
        head.stop()
    for code, out in [first, *both]:
        assert code == 0 and "succeeded" in out, out[-4000:]
    reference, reference_results = _ledger(alone), _results(alone)
    assert len(reference) == 40 and [r["round"] for r in reference_results] == [0, 1]
    for run in (local, remote):
        assert _ledger(run) == reference, f"{run}: the ledger differs from the same run done alone"
        assert _results(run) == reference_results, f"{run}: results.jsonl differs from the run done alone"
    for run, other in ((local, remote), (remote, local)):
        info = storage.read_json(storage.join(run, "run.json"))
        assert info["pool"]["uri"].startswith(run.rstrip("/")), info["pool"]
        mentions = [k for k, data in _texts(run).items() if other.split("://")[-1].encode() in data]
        assert not mentions, f"{run}'s files name the other run's directory {other}: {mentions}"
