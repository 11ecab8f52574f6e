"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1 (reachable from pyarrow's C++ client
and from Ray worker processes, which moto's in-process mocks are not).

Use from a conftest with ``from tests.s3server import *`` or ``pytest_plugins = ["tests.s3server"]``.

* ``s3_server`` (session): starts the server once, creates a bucket, yields an object with
  ``.endpoint`` (``http://127.0.0.1:<port>``), ``.bucket``, ``.region`` and ``.uri(*parts)``. It sets
  dummy AWS credentials in the environment only if none are set (moto accepts any) and restores them.
* ``s3`` (function): the same object with ``ray_al.core.storage.configure_s3`` pointed at it for the test, and
  the previous S3 settings restored afterwards.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

import pytest

__all__ = ["S3Server", "s3_server", "s3"]

_REGION = "us-east-1"
_state: dict = {"server": None, "users": 0, "info": None, "saved_env": {}}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    region: str = _REGION

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *[p.strip("/") for p in parts if p]])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start() -> S3Server:
    from moto.server import ThreadedMotoServer
    import boto3

    # Needed: pyarrow/boto need *some* credentials; never override a user's real ones.
    defaults = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true"}
    for k, v in defaults.items():
        if k not in os.environ:
            _state["saved_env"][k] = None
            os.environ[k] = v
    # moto's server logs every request at INFO through werkzeug: too loud in failure reports
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"ray-al-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=_REGION).create_bucket(Bucket=bucket)
    _state["server"] = server
    return S3Server(endpoint=endpoint, bucket=bucket)


@pytest.fixture(scope="session")
def s3_server():
    # Shared across every place that imports this fixture (each import registers its own fixture
    # definition): one server per session, stopped when the last user tears down.
    if _state["server"] is None:
        _state["info"] = _start()
    _state["users"] += 1
    try:
        yield _state["info"]
    finally:
        _state["users"] -= 1
        if _state["users"] == 0 and _state["server"] is not None:
            _state["server"].stop()
            _state["server"] = None
            for k, v in _state["saved_env"].items():
                if v is None:
                    os.environ.pop(k, None)
            _state["saved_env"] = {}


@pytest.fixture
def s3(s3_server, monkeypatch):
    """``s3_server`` with ray_al.core.storage configured to use it for this test only."""
    from ray_al.core import storage

    saved = dict(storage._explicit)
    for k in ("RAY_AL_S3_ENDPOINT", "AWS_REGION"):
        monkeypatch.setenv(k, os.environ.get(k, ""))  # monkeypatch restores these afterwards
    storage.configure_s3(s3_server.endpoint, s3_server.region)
    try:
        yield s3_server
    finally:
        storage.configure_s3(saved["endpoint"], saved["region"])
