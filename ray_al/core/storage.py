"""Filesystems, paths and atomic writes for local paths and ``s3://`` URIs.

Every function takes either a local path (optionally ``file://...``) or an ``s3://bucket/key`` URI.

S3 endpoint and region come from, in order: :func:`configure_s3`, the environment
(``RAY_AL_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``; ``AWS_REGION`` or ``AWS_DEFAULT_REGION``), then the
defaults (AWS itself, region ``us-east-1``). The endpoint is always passed to the clients explicitly
(pyarrow ``endpoint_override``, s3fs ``client_kwargs``) because pyarrow has been seen ignoring the
endpoint environment variables. Credentials come from the usual AWS chain (env, ~/.aws, instance role).

Atomicity: a local write goes to a temporary file in the same directory, is fsync'ed and then
``os.replace``'d over the target; an S3 object only becomes visible once its upload completes, so a
single PUT (or a completed multipart upload) is atomic too. Readers never see half a file.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import threading
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "configure_s3", "s3_settings", "is_s3", "pyarrow_fs", "fsspec_fs", "join", "exists", "isdir",
    "makedirs", "listdir", "read_bytes", "read_text", "write_bytes_atomic", "write_text_atomic",
    "write_json_atomic", "read_json", "remove_tree", "total_bytes", "create_exclusive", "write_parquet_atomic", "read_parquet",
]

DEFAULT_REGION = "us-east-1"

_lock = threading.Lock()
_explicit: dict[str, str | None] = {"endpoint": None, "region": None}
_fs_cache: dict[tuple[str | None, str], pafs.S3FileSystem] = {}


# ----------------------------------------------------------------------------- S3 settings
def configure_s3(endpoint: str | None, region: str | None) -> None:
    """Set the process-wide S3 endpoint and region (``None`` falls back to the environment).

    The endpoint/region are also exported as ``RAY_AL_S3_ENDPOINT`` / ``AWS_REGION`` so that Ray
    workers (and subprocesses) started after this call inherit them and resolve the same store.
    """
    with _lock:
        _explicit["endpoint"] = endpoint or None
        _explicit["region"] = region or None
        _fs_cache.clear()
    # Exported on purpose: Ray worker processes spawned later inherit the driver's environment.
    if endpoint:
        os.environ["RAY_AL_S3_ENDPOINT"] = endpoint
    if region:
        os.environ["AWS_REGION"] = region


def s3_settings() -> tuple[str | None, str]:
    """(endpoint or None for AWS itself, region) currently in effect."""
    endpoint = (_explicit["endpoint"] or os.environ.get("RAY_AL_S3_ENDPOINT")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    region = (_explicit["region"] or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    return endpoint, region


def _where() -> str:
    endpoint, region = s3_settings()
    return f"endpoint {endpoint or 'AWS (default)'}, region {region}"


# ----------------------------------------------------------------------------- paths
def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


REMOTE_SCHEMES = ("s3://", "http://", "https://", "gs://", "azure-blob://")


def is_remote(uri: str | None) -> bool:
    """An object-store or web URI that a labelling tool can fetch itself (no local file)."""
    return isinstance(uri, str) and uri.startswith(REMOTE_SCHEMES)


def _local(uri: str) -> str:
    uri = os.fspath(uri)
    if uri.startswith("file://"):
        return urlparse(uri).path
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key")
    return uri


TMP_PREFIX = ".tmp-"  # a local atomic write's temporary file; one left behind means its writer was killed


def absolute(uri: str) -> str:
    """``uri`` usable from any working directory: s3:// as is, a local path made absolute. Ray workers
    (a Ray Train worker runs in its trial's artifacts directory) do not share the driver's. "" (no such
    file: a pool without a test split) stays "", not the working directory."""
    if not uri:
        return uri
    return uri if is_s3(uri) else os.path.abspath(_local(uri))


def _s3_path(uri: str) -> str:
    """'s3://bucket/a/b/' -> 'bucket/a/b' (pyarrow's path form)."""
    path = uri[len("s3://"):].strip("/")
    if not path:
        raise ValueError(f"{uri!r} names no bucket: use s3://bucket/prefix")
    return path


def join(uri: str, *parts: str) -> str:
    """Join path parts; ``s3://`` URIs always use '/'."""
    uri = os.fspath(uri)
    if is_s3(uri):
        out = uri.rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return os.path.join(uri, *[str(p) for p in parts])


def pyarrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path without scheme) for ``uri``; the S3 endpoint is passed explicitly."""
    uri = os.fspath(uri)
    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local(uri))
    endpoint, region = s3_settings()
    key = (endpoint, region)
    with _lock:
        fs = _fs_cache.get(key)
        if fs is None:
            kwargs: dict[str, Any] = {"region": region,
                                      # a wrong endpoint should fail in seconds, not minutes
                                      "connect_timeout": 5, "request_timeout": 60,
                                      "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
            if endpoint:
                parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme or "https"
            fs = pafs.S3FileSystem(**kwargs)
            _fs_cache[key] = fs
    return fs, _s3_path(uri)


def fsspec_fs(uri: str):
    """(fsspec filesystem, path without scheme): s3fs with the explicit endpoint for ``s3://``."""
    uri = os.fspath(uri)
    if not is_s3(uri):
        from fsspec.implementations.local import LocalFileSystem
        return LocalFileSystem(), os.path.abspath(_local(uri))
    import s3fs  # optional at import time: only S3 users need it

    endpoint, region = s3_settings()
    client_kwargs: dict[str, str] = {"region_name": region}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    # Few, short retries (as pyarrow_fs): an endpoint that went away fails in seconds, not a minute.
    config = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config)
    fs.retries = 3  # s3fs's own retries around botocore's (class default 5)
    return fs, _s3_path(uri)


# ----------------------------------------------------------------------------- errors
def _not_found(uri: str, err: BaseException | None = None) -> FileNotFoundError:
    if is_s3(uri):
        bucket = _s3_path(uri).split("/", 1)[0]
        msg = (f"{uri} not found on S3 ({_where()}). Check the bucket name ({bucket!r}) and key, "
               "the endpoint (RAY_AL_S3_ENDPOINT / AWS_ENDPOINT_URL or the config's S3 endpoint), "
               "the region (AWS_REGION) and that your credentials can read it.")
    else:
        msg = (f"{uri} not found (absolute path: {os.path.abspath(_local(uri))}). "
               "Check the path and the working directory.")
    if err is not None and is_s3(uri):  # the client's own words help with S3; locally they repeat the path
        msg += f" [{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}]"
    return FileNotFoundError(msg)


_MISSING_MARKERS = ("NoSuchBucket", "NO_SUCH_BUCKET", "NoSuchKey", "NO_SUCH_KEY", "does not exist",
                    "Path does not exist", "not found", "NotFound", "HTTP status 404")
_CONNECT_MARKERS = ("Couldn't connect", "curlCode", "NETWORK_CONNECTION", "Connection refused",
                    "Could not connect", "Unable to connect", "Timeout was reached")


def _botocore_connection_failure(err: BaseException) -> bool:
    """botocore's lost connections and timeouts, which are no OSErrors and which s3fs passes on as they are."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
    except ImportError:
        return False
    return isinstance(err, (BotoConnectionError, HTTPClientError))


def _unreachable(uri: str, text: str) -> ConnectionError:
    return ConnectionError(
        f"cannot reach S3 for {uri} ({_where()}): {text.strip().splitlines()[0]}. Check the "
        "endpoint URL (RAY_AL_S3_ENDPOINT / AWS_ENDPOINT_URL or the config) and the network.")


def _translate(uri: str, err: OSError) -> OSError:
    """Map a filesystem error to FileNotFoundError / ConnectionError with an actionable message."""
    if isinstance(err, FileNotFoundError):
        return _not_found(uri, err)
    text = str(err)
    if is_s3(uri):
        if any(m in text for m in _MISSING_MARKERS):
            return _not_found(uri, err)
        if any(m in text for m in _CONNECT_MARKERS):
            return _unreachable(uri, text)
        if "AccessDenied" in text or "ACCESS_DENIED" in text or "403" in text:
            return PermissionError(f"access denied to {uri} ({_where()}): check your AWS credentials "
                                   f"and the bucket policy. [{text.strip().splitlines()[0]}]")
    return err


# ----------------------------------------------------------------------------- queries
def exists(uri: str) -> bool:
    """True if a file or a (non-empty, on S3) directory exists at ``uri``."""
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    fs, path = pyarrow_fs(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        err = _translate(uri, e)
        if isinstance(err, FileNotFoundError):
            return False
        raise err from e
    return info.type != pafs.FileType.NotFound


def isdir(uri: str) -> bool:
    if not is_s3(uri):
        return os.path.isdir(_local(uri))
    fs, path = pyarrow_fs(uri)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError as e:
        err = _translate(uri, e)
        if isinstance(err, FileNotFoundError):
            return False
        raise err from e


def _check_bucket(uri: str) -> None:
    fs, path = pyarrow_fs(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise _translate(f"s3://{bucket}", e) from e
    if info.type == pafs.FileType.NotFound:
        raise _not_found(f"s3://{bucket}")


def makedirs(uri: str, private: bool = False) -> None:
    """Create a local directory (and parents); `private`: a new leaf is the user's only (0700: a run's
    labels are the team's spend). On S3 directories are implicit: only checks the bucket."""
    if is_s3(uri):
        _check_bucket(uri)
        return
    os.makedirs(_local(uri), mode=0o700 if private else 0o777, exist_ok=True)


def listdir(uri: str) -> list[str]:
    """Sorted names (not paths) directly under ``uri``; FileNotFoundError if it does not exist."""
    if not is_s3(uri):
        try:
            return sorted(os.listdir(_local(uri)))
        except FileNotFoundError as e:
            raise _not_found(uri, e) from e
    fs, path = pyarrow_fs(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=False))
    except OSError as e:
        raise _translate(uri, e) from e
    return sorted({posixpath.basename(i.path.rstrip("/")) for i in infos} - {""})


def total_bytes(uri: str) -> int:
    """Size of a file, or of every file under a directory (one listing; one LIST call on S3)."""
    fs, path = pyarrow_fs(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return int(info.size)
        if info.type == pafs.FileType.NotFound:
            raise _not_found(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as e:
        raise _translate(uri, e) from e
    return sum(int(i.size) for i in infos if i.type == pafs.FileType.File)


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        try:
            with open(_local(uri), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise _not_found(uri, e) from e
    fs, path = pyarrow_fs(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise _translate(uri, e) from e


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def read_json(uri: str) -> Any:
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri} is not valid JSON ({e}); it may be corrupt: restore or delete it") from e


# ----------------------------------------------------------------------------- writes
def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see either the old file or the whole new one, never a part."""
    if is_s3(uri):
        fs, path = pyarrow_fs(uri)
        try:
            # One object upload: S3 makes the object visible only once the upload completes.
            with fs.open_output_stream(path, metadata={}) as f:
                f.write(data)
        except OSError as e:
            raise _translate(uri, e) from e
        return
    _write_local(uri, data, os.replace)


def _write_local(uri: str, data: bytes, publish) -> None:
    """Write ``data`` to a synced temp file beside ``uri``, then ``publish(tmp, path)`` (os.replace: swap
    in; os.link: create, FileExistsError if taken) and make the new name durable."""
    path = os.path.abspath(_local(uri))
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)}-", dir=directory)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except FileExistsError:  # os.link: the name is taken (create_exclusive's answer, not a failure)
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        if os.path.exists(tmp):  # gone after os.replace; still there after os.link or a failure
            os.unlink(tmp)
    _fsync_dir(directory)


def _write_error(path: str, err: OSError) -> OSError:
    """The same kind of error, naming the file: a full disk's ENOSPC names none, a read-only directory's
    EACCES only the temporary file."""
    return type(err)(err.errno, f"cannot write {path}: {err.strerror or err}")


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` only if nothing is there yet: True if this call created it, False if the
    file already existed (another writer claimed the name). Whole or nothing, like write_bytes_atomic.
    Local: a hard link of a finished temp file (atomic, fails if the name exists); S3: a conditional
    PUT (If-None-Match: *), which AWS S3, MinIO and moto honour."""
    if is_s3(uri):
        fs, path = fsspec_fs(uri)
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                return False
            raise _translate(uri, e) from e
        except Exception as e:
            if _botocore_connection_failure(e):
                raise _unreachable(uri, str(e)) from e
            raise
        return True
    try:
        _write_local(uri, data, os.link)
    except FileExistsError:
        return False
    return True


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable (a crash right after os.replace keeps the new name).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes_atomic(uri, text.encode(encoding))


def write_json_atomic(uri: str, obj: Any) -> None:
    write_text_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    # numpy scalars/arrays show up in result rows; make them plain JSON.
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def remove_tree(uri: str) -> None:
    """Delete a file or a directory tree; a missing path is not an error."""
    if not is_s3(uri):
        path = _local(uri)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    fs, path = pyarrow_fs(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as e:
        err = _translate(uri, e)
        if isinstance(err, FileNotFoundError):
            return
        raise err from e


def write_parquet_atomic(uri: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (serialised in memory: meant for ledgers, queries, manifests)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())


def read_parquet(uri: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files (optionally only ``columns``/``filters``)."""
    fs, path = pyarrow_fs(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)
    except OSError as e:
        raise _translate(uri, e) from e
