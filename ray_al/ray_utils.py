"""Ray start-up in one place: `ray.init()` with no address joins the cluster under `ray job submit` and
starts a local one otherwise (DESIGN.md)."""
from __future__ import annotations

import logging
import os

# Variables Ray workers must see too (S3 endpoint for tests/MinIO, auth mode, thread caps).
_FORWARDED_ENV = ("RAY_AL_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AL_SHARED")


def init_ray(num_cpus: int = 0, quiet: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    # Local clusters use token auth by default since Ray 2.59; a laptop run has nobody to authenticate.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    kwargs: dict = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    if quiet:
        kwargs["logging_level"] = logging.WARNING
    # RAY_ADDRESS=local (tests) forces a fresh local instance even if a `ray start` cluster is around.
    joining = os.environ.get("RAY_ADDRESS", "local") != "local"
    if num_cpus and not joining:
        kwargs["num_cpus"] = num_cpus
    # Keep the dashboard: Ray Train's placement-group cleaner queries the State API it serves, and
    # without it removes the training workers' placement group mid-run.
    ray.init(**kwargs)
    quiet_logs()


def quiet_logs() -> None:
    """Progress bars in a terminal; in logs (CI, `ray job logs`) Ray Data's per-second status dumps
    and Ray Train's per-checkpoint lines bury the round table, so keep warnings only."""
    import sys

    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stdout.isatty():
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
