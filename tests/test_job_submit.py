"""The documented cluster command, for real: `ray start --head` on loopback, then cluster/README.md's
`ray job submit --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": ...}}'` of a cycle whose pool and
run directory are on S3 (moto's server on loopback), killed, then resubmitted with `--resume` to SUCCEEDED
(the CLI prints "Job '...' succeeded").

The driver forwards AWS_* to its workers through ray.init(runtime_env=...); when the job's runtime env
already sets the same keys, Ray refuses the merge ("Failed to merge the Job's runtime env"). So the
forwarding leaves out what the job set (`ray_utils.job_env_keys`).
"""
from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ray_al.core import storage
from ray_al.bench.overhead import JOB_EXCLUDES, LocalHead
from ray_al.data.builtin import digits
from ray_al.core.faults import KILL_AT, KILL_MARKER
from ray_al.workers.ray_utils import forwarded_env, job_env_keys
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)
from tests.test_cycle import ledger_rows

REPO = Path(__file__).resolve().parents[1]
SECRET = "job-secret-" + uuid.uuid4().hex[:12]  # moto accepts any key; this one must never be logged


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


@pytest.mark.timeout(1800)
def test_cluster_readme_job_submit_on_s3_killed_and_resumed_with_credentials_in_the_runtime_env(s3, tmp_path):
    """Pool, run directory, Ray Train checkpoints and embeddings on S3; the job's driver is SIGKILLed once
    round 0's embeddings are written (before their marker); a second `ray job submit ... --resume s3://...`
    removes the dead attempt's embeddings and finishes the run to SUCCEEDED with the labels, their rounds and
    the accuracies of an undisturbed job; the credentials are in no log line and no file of the run."""
    run_uri, reference_uri = (s3.uri(f"runs/{what}-{uuid.uuid4().hex[:8]}") for what in ("job", "undisturbed"))
    marker = tmp_path / "killed"
    credentials = {"AWS_ACCESS_KEY_ID": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET,
                   "RAY_AL_S3_ENDPOINT": s3.endpoint, "AWS_REGION": s3.region}
    runtime_env = {"env_vars": {**credentials, KILL_AT: "embed.written", KILL_MARKER: str(marker)},
                   "excludes": JOB_EXCLUDES}
    data = _s3_pool(s3)
    head = LocalHead(REPO, cpus=2)
    try:
        head.wait_ready()
        reference = _submit(head, {"env_vars": credentials, "excludes": JOB_EXCLUDES},
                            "--smoke-test", "al.rounds=1", *data, f"run.dir={reference_uri}")
        first = _submit(head, runtime_env, "--smoke-test", "al.rounds=1", *data, f"run.dir={run_uri}")
        dead = _embeddings(run_uri) if first[0] != 0 else {}
        planted = _plant_dead_part(run_uri) if dead else ""
        killed_by = datetime.now(timezone.utc)
        second = _submit(head, runtime_env, "--resume", run_uri)
    finally:
        head.stop()
    assert reference[0] == 0 and "succeeded" in reference[1], reference[1][-4000:]
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
    assert _results(run_uri) == _results(reference_uri)
    ledger = ledger_rows(run_uri)
    assert ledger == ledger_rows(reference_uri)
    queried = storage.read_parquet(storage.join(run_uri, "rounds", "0000", "queries.parquet")).column("id")
    assert len({i for i, *_ in ledger}) == len(ledger) == 20 + 20  # the seed set and round 0's batch, once each
    assert sorted(i for i, _, r, _ in ledger if r == 1) == sorted(queried.to_pylist())
    objects = _objects(run_uri)
    assert any("/ray_train/" in k for k in objects) and any("/embeddings/" in k for k in objects)
    for text in (reference[1], first[1], second[1]):
        assert SECRET not in text, "a credential was printed in the job's logs"
    leaked = [k for k, data in objects.items() if SECRET.encode() in data]
    assert not leaked, f"the credential is in run-directory files: {leaked}"
