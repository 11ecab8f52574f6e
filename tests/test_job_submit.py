"""The documented cluster command, for real: `ray start --head` on loopback, then cluster/README.md's
`ray job submit --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": ...}}'` of a cycle whose run
directory is on S3 (moto's server on loopback), to SUCCEEDED (the CLI prints "Job '...' succeeded").

The driver forwards AWS_* to its workers through ray.init(runtime_env=...); when the job's runtime env
already sets the same keys, Ray refuses the merge ("Failed to merge the Job's runtime env"). So the
forwarding leaves out what the job set (`ray_utils.job_env_keys`).
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from ray_al import storage
from ray_al.bench.overhead import JOB_EXCLUDES, LocalHead, _env
from ray_al.ray_utils import forwarded_env, job_env_keys
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
SECRET = "job-secret-" + uuid.uuid4().hex[:12]  # moto accepts any key; this one must never be logged


def test_forwarding_leaves_out_what_the_job_already_sets():
    job = json.dumps({"runtime_env": {"env_vars": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}})
    environ = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "RAY_AL_S3_ENDPOINT": "http://e",
               "RAY_JOB_CONFIG_JSON_ENV_VAR": job}
    assert job_env_keys(environ) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(forwarded_env(environ)) - job_env_keys(environ) == {"RAY_AL_S3_ENDPOINT"}
    assert job_env_keys({}) == set() and job_env_keys({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}) == set()


def test_cluster_readme_job_submit_with_credentials_in_the_runtime_env_succeeds_on_s3(s3):
    run_uri = s3.uri(f"runs/job-{uuid.uuid4().hex[:8]}")
    head = LocalHead(REPO, cpus=2)
    try:
        head.wait_ready()
        runtime_env = {"env_vars": {"AWS_ACCESS_KEY_ID": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET,
                                    "RAY_AL_S3_ENDPOINT": s3.endpoint, "AWS_REGION": s3.region},
                       "excludes": JOB_EXCLUDES}
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.address,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "-m", "ray_al.cycle", "--smoke-test", "al.rounds=0", f"run.dir={run_uri}"]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(REPO), capture_output=True, text=True, timeout=900)
    finally:
        head.stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-4000:]  # the CLI: "Job 'raysubmit_...' succeeded"
    rows = [json.loads(line) for line in storage.read_text(storage.join(run_uri, "results.jsonl")).splitlines()]
    assert [r["round"] for r in rows] == [0]
    assert SECRET not in out, "a credential was printed in the job's logs"
    assert SECRET not in storage.read_text(storage.join(run_uri, "run.json"))
