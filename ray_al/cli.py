"""What the command lines share: the experiment arguments, and user errors as one line and exit status 2."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

# Our user-facing errors are ValueErrors that say what to do (ConfigError, PoolError, LedgerError, ...)
# and the OS errors of a path or bucket that is missing or not ours.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError)
# A full disk, a read-only file system or a spent quota: the user's to fix (ray_al.core.storage names the path).
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG})


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


def run_main(body: Callable[[], int]) -> int:
    """body()'s exit status; a user error prints `error: ...` and returns 2 (RAY_AL_DEBUG=1: the traceback)."""
    try:
        return body()
    except (*USER_ERRORS, OSError) as exc:
        if os.environ.get("RAY_AL_DEBUG") or not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def experiment_parser(prog: str, description: str, epilog: str, config_help: str,
                      config_required: bool = False) -> argparse.ArgumentParser:
    """`section.key=value` overrides, --config and --smoke-test (ray_al.cycle and ray_al.sweep)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--config", required=config_required, help=config_help)
    parser.add_argument("--smoke-test", action="store_true", help="tiny data, one epoch, two rounds")
    return parser
