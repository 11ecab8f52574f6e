"""The documented cluster command, for real: `ray start --head` on loopback, then cluster/README.md's
`ray job submit --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": ...}}'` of a cycle whose pool and
run directory are on S3 (moto's server on loopback), killed, then resubmitted with `--resume` to SUCCEEDED
(the CLI prints "Job '...' succeeded").

The driver forwards AWS_* to its workers through ray.init(runtime_env=...); when the job's runtime env
already sets the same keys, Ray refuses the merge ("Failed to merge the Job's runtime env"). So the
forwarding leaves out what the job set (`ray_utils.job_env_keys`).

Two users on one cluster (issue 23, "Two jobs on one cluster"): two `ray job submit` cycles at once on the
same head, one run directory local, one `s3://`. ray_al names no Ray actor (`grep -n "name=\\|get_actor\\|
namespace" ray_al/workers/*.py`, 2026-12-06: only Ray Train run names, whose storage is under each run's own
directory), so nothing is shared by name; the test checks that neither run's files mention the other's.

Every job here must end equal to the same run done alone on this head, submitted first (`cluster`): one head
and one reference for the module, so the drills cost one Ray start and one undisturbed run between them.
"""
from __future__ import annotations

import json
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from ray_al.core import storage
from ray_al.bench.overhead import JOB_EXCLUDES, LocalHead
from ray_al.data.builtin import digits
from ray_al.core.faults import KILL_AT, KILL_MARKER
from ray_al.run.ledger import Ledger
from ray_al.workers.ray_utils import forwarded_env, job_env_keys
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)
from tests.test_cycle import ledger_rows

REPO = Path(__file__).resolve().parents[1]
SECRET = "job-secret-" + uuid.uuid4().hex[:12]  # moto accepts any key; this one must never be logged
ARGS = ("--smoke-test", "al.rounds=1")


def test_forwarding_leaves_out_what_the_job_already_sets():
    job = json.dumps({"runtime_env": {"env_vars": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}})
    environ = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "RAY_AL_S3_ENDPOINT": "http://e",
               "RAY_JOB_CONFIG_JSON_ENV_VAR": job}
    assert job_env_keys(environ) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(forwarded_env(environ)) - job_env_keys(environ) == {"RAY_AL_S3_ENDPOINT"}
    assert job_env_keys({}) == set() and job_env_keys({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}) == set()


def _submit(head: LocalHead, runtime_env: dict, *cycle_args: str) -> tuple[int, str]:
    """cluster/README.md's command: `ray job submit --working-dir . --runtime-env-json ... -- python -m
    ray_al.cycle ...`; returns (exit code, output)."""
    proc = head.submit(REPO, runtime_env, [sys.executable, "-m", "ray_al.cycle", *cycle_args], timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _s3_pool(s3) -> list[str]:
    """The digits written to S3 as a user's Parquet pool and test split: the cycle's data overrides."""
    pool, test, _ = digits(seed=0)
    folder = f"data-{uuid.uuid4().hex[:8]}"
    pool_uri, test_uri = s3.uri(folder, "pool.parquet"), s3.uri(folder, "test.parquet")
    storage.write_parquet_atomic(pool_uri, pool)
    storage.write_parquet_atomic(test_uri, test)
    return ["data.dataset=parquet", f"data.pool={pool_uri}", f"data.test={test_uri}"]


def _objects(run_uri: str) -> dict[str, bytes]:
    fs, root = storage.fsspec_fs(run_uri)
    return {key: fs.cat_file(key) for key in fs.find(root)}


def _results(run_uri: str) -> list[tuple]:
    rows = [json.loads(line) for line in storage.read_text(storage.join(run_uri, "results.jsonl")).splitlines()]
    return [(r["round"], r["labels"], r["accuracy"]) for r in rows]


def _embeddings(run_uri: str) -> dict[str, datetime]:
    """Round 0's embedding objects -> when each was last written."""
    fs, root = storage.fsspec_fs(storage.join(run_uri, "rounds", "0000", "embeddings"))
    fs.invalidate_cache()  # s3fs caches listings, and this fs is cached: read the store as it is now
    return {key: fs.info(key)["LastModified"] for key in fs.find(root)}


def _plant_dead_part(run_uri: str) -> str:
    """One more part file in the dead attempt's embeddings (a dead attempt of more ranks leaves one): a
    resume that kept the directory would read its rows twice."""
    fs, root = storage.fsspec_fs(storage.join(run_uri, "rounds", "0000", "embeddings"))
    part = next(k for k in fs.find(root) if "split=unlabeled" in k and k.endswith(".parquet"))
    dead = part.rsplit("/", 1)[0] + "/part-dead-attempt.parquet"
    fs.pipe_file(dead, fs.cat_file(part))
    return dead


def _credentials(server) -> dict:
    return {"AWS_ACCESS_KEY_ID": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_AL_S3_ENDPOINT": server.endpoint,
            "AWS_REGION": server.region}


@pytest.fixture(scope="module")
def cluster(s3_server):
    """One `ray start --head` for the module, the digits pool on S3, and the run done alone on that head:
    (head, data overrides, the reference run's URI and its job output)."""
    saved = dict(storage._explicit)
    storage.configure_s3(s3_server.endpoint, s3_server.region)
    head = LocalHead(REPO, cpus=4)  # logical CPUs: two jobs' train and embed workers fit at once
    try:
        head.wait_ready()
        data = _s3_pool(s3_server)
        alone = s3_server.uri(f"runs/alone-{uuid.uuid4().hex[:8]}")
        code, out = _submit(head, {"env_vars": _credentials(s3_server), "excludes": JOB_EXCLUDES},
                            *ARGS, *data, f"run.dir={alone}")
        assert code == 0 and "succeeded" in out, out[-4000:]
        yield SimpleNamespace(head=head, data=data, alone=alone, output=out)
    finally:
        head.stop()
        storage.configure_s3(saved["endpoint"], saved["region"])


@pytest.mark.timeout(1800)
def test_cluster_readme_job_submit_on_s3_killed_and_resumed_with_credentials_in_the_runtime_env(
        cluster, s3, tmp_path):
    """Pool, run directory, Ray Train checkpoints and embeddings on S3; the job's driver is SIGKILLed once
    round 0's embeddings are written (before their marker); a second `ray job submit ... --resume s3://...`
    removes the dead attempt's embeddings and finishes the run to SUCCEEDED with the labels, their rounds and
    the accuracies of the undisturbed job; the credentials are in no log line and no file of the run."""
    run_uri = s3.uri(f"runs/job-{uuid.uuid4().hex[:8]}")
    marker = tmp_path / "killed"
    runtime_env = {"env_vars": {**_credentials(s3), KILL_AT: "embed.written", KILL_MARKER: str(marker)},
                   "excludes": JOB_EXCLUDES}
    first = _submit(cluster.head, runtime_env, *ARGS, *cluster.data, f"run.dir={run_uri}")
    dead = _embeddings(run_uri) if first[0] != 0 else {}
    planted = _plant_dead_part(run_uri) if dead else ""
    killed_by = datetime.now(timezone.utc)
    second = _submit(cluster.head, runtime_env, "--resume", run_uri)
    assert first[0] != 0 and marker.is_file(), first[1][-4000:]
    assert "killed at embed.written" in marker.read_text()
    assert dead, f"the killed job left no embeddings in {run_uri}/rounds/0000/embeddings"
    assert second[0] == 0 and "succeeded" in second[1], second[1][-4000:]  # "Job 'raysubmit_...' succeeded"
    # the dead attempt's embeddings are gone: its extra part removed, every other object written again
    after = _embeddings(run_uri)
    assert planted not in after, f"the dead attempt's {planted} was kept"
    kept = sorted(k for k in dead if k in after and after[k] < killed_by)
    assert not kept, f"the dead attempt's embeddings were kept, not written again: {kept}"
    # the labels, their rounds and the accuracies are the undisturbed job's
    assert [r for r, *_ in _results(run_uri)] == [0, 1]
    assert _results(run_uri) == _results(cluster.alone)
    ledger = ledger_rows(run_uri)
    assert ledger == ledger_rows(cluster.alone)
    queried = storage.read_parquet(storage.join(run_uri, "rounds", "0000", "queries.parquet")).column("id")
    assert len({i for i, *_ in ledger}) == len(ledger) == 20 + 20  # the seed set and round 0's batch, once each
    assert sorted(i for i, _, r, _ in ledger if r == 1) == sorted(queried.to_pylist())
    objects = _objects(run_uri)
    assert any("/ray_train/" in k for k in objects) and any("/embeddings/" in k for k in objects)
    for text in (cluster.output, first[1], second[1]):
        assert SECRET not in text, "a credential was printed in the job's logs"
    leaked = [k for k, data in objects.items() if SECRET.encode() in data]
    assert not leaked, f"the credential is in run-directory files: {leaked}"


def _ledger(run_uri: str) -> list[tuple]:
    table = Ledger.load(run_uri).table
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "label", "round", "source"))))


def _rows_without_seconds(run_uri: str) -> list[dict]:
    """results.jsonl without the timings (the only field two equal runs may differ in)."""
    rows = [json.loads(line) for line in storage.read_text(storage.join(run_uri, "results.jsonl")).splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.timeout(1800)
def test_two_jobs_at_once_on_one_head_equal_each_run_done_alone(cluster, s3, tmp_path):
    local, remote = str(tmp_path / "local"), s3.uri(f"runs/two-{uuid.uuid4().hex[:8]}")
    runtime_env = {"env_vars": _credentials(s3), "excludes": JOB_EXCLUDES}
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda d: _submit(cluster.head, runtime_env, *ARGS, *cluster.data, f"run.dir={d}"),
                             [local, remote]))
    for code, out in both:
        assert code == 0 and "succeeded" in out, out[-4000:]
    reference, reference_rows = _ledger(cluster.alone), _rows_without_seconds(cluster.alone)
    assert len(reference) == 40 and [r["round"] for r in reference_rows] == [0, 1]
    for run in (local, remote):
        assert _ledger(run) == reference, f"{run}: the ledger differs from the same run done alone"
        assert _rows_without_seconds(run) == reference_rows, f"{run}: results.jsonl differs from the run done alone"
    for run, other in ((local, remote), (remote, local)):
        mentions = [k for k, data in _objects(run).items() if other.split("://")[-1].encode() in data]
        assert not mentions, f"{run}'s files name the other run's directory {other}: {mentions}"
