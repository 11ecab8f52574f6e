"""Ray start-up in one place: `ray.init()` with no address joins the cluster under `ray job submit` and
starts a local one otherwise (README, "On a cluster")."""
from __future__ import annotations

import logging
import os

# Variables Ray workers must see too (S3 endpoint for tests/MinIO, auth mode, thread caps).
_FORWARDED_ENV = ("RAY_AL_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AL_SHARED")
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = "0.2"
_PREEMPTION_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


_deferred: dict = {}


def node_id() -> str:
    """The Ray node this process runs on (a worker's or the driver's)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def defer_ray(num_cpus: int = 0) -> None:
    """Start Ray only once a step needs it (`ensure_ray`, called by the Ray plumbing), with these settings:
    refused input, and a resumed run whose next steps are selection and labelling, never wait for Ray."""
    _deferred["num_cpus"] = num_cpus


def ensure_ray() -> None:
    """Ray started with `defer_ray`'s settings, unless it runs already (a sweep trial, a test's cluster)."""
    init_ray(_deferred.get("num_cpus", 0))


def init_ray(num_cpus: int = 0, quiet: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    # Local clusters use token auth by default since Ray 2.59; a laptop run has nobody to authenticate.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    env_vars = forwarded_env(os.environ)
    env_vars.update(_train_poll_interval())
    joining = os.environ.get("RAY_ADDRESS", "local") != "local"
    if not joining:
        env_vars.update(_no_preemption_watcher())
    env_vars = {k: v for k, v in env_vars.items() if k not in job_env_keys(os.environ)}
    kwargs: dict = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    if quiet:
        kwargs["logging_level"] = logging.WARNING
    # RAY_ADDRESS=local (tests) forces a fresh local instance even if a `ray start` cluster is around.
    if num_cpus and not joining:
        kwargs["num_cpus"] = num_cpus
    # Keep the dashboard: Ray Train's placement-group cleaner queries the State API it serves, and
    # without it removes the training workers' placement group mid-run.
    ray.init(**kwargs)
    quiet_logs()


# Set by Ray for a driver started by `ray job submit`: the job's config, its runtime env included.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def forwarded_env(environ) -> dict:
    """The variables of `environ` that Ray workers must see as well (S3 endpoint and keys, ...)."""
    return {k: environ[k] for k in _FORWARDED_ENV if k in environ}


def job_env_keys(environ) -> set:
    """Env var names the submitting job's runtime env already sets (they reach every worker). ray.init
    refuses a runtime env that sets any of them again ("Failed to merge the Job's runtime env"), as the
    documented `ray job submit --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": ...}}'` would."""
    import json

    raw = environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return set()
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return set((runtime_env.get("env_vars") or {}).keys())


def _train_poll_interval() -> dict:
    """Ray Train's controller polls its workers every 2 s by default, so every fit waits up to 2 s to see
    its workers finish and every epoch report up to 2 s to be taken: seconds per round for no work.
    0.2 s unless the user chose (python -m ray_al.bench.overhead measures it). Returned for forwarding,
    so the controller sees it on a cluster too; a value the user set (maybe in the job's runtime env,
    which would conflict) is left alone."""
    if _POLL_ENV in os.environ:
        return {}
    os.environ[_POLL_ENV] = TRAIN_POLL_INTERVAL_S
    return {_POLL_ENV: TRAIN_POLL_INTERVAL_S}


def _no_preemption_watcher() -> dict:
    """Ray Train starts an actor per fit that watches for nodes being drained (spot instances); a local Ray
    that ray_al starts has no node to drain, and the actor costs a process start and its imports on every
    fit (python -m ray_al.bench.overhead). On a cluster, or where the user chose, it is left alone."""
    if _PREEMPTION_ENV in os.environ:
        return {}
    os.environ[_PREEMPTION_ENV] = "0"
    return {_PREEMPTION_ENV: "0"}


def quiet_logs() -> None:
    """Progress bars in a terminal; in logs (CI, `ray job logs`) Ray Data's per-second status dumps
    and Ray Train's per-checkpoint lines bury the round table, so keep warnings only."""
    import sys

    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stdout.isatty():
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
