"""What the command lines share: the experiment arguments, and user errors as one line and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

# Our user-facing errors are ValueErrors that say what to do (ConfigError, PoolError, LedgerError, ...)
# and the OS errors of a path or bucket that is missing or not ours.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError)


def run_main(body: Callable[[], int]) -> int:
    """body()'s exit status; a user error prints `error: ...` and returns 2 (RAY_AL_DEBUG=1: the traceback)."""
    try:
        return body()
    except USER_ERRORS as exc:
        if os.environ.get("RAY_AL_DEBUG"):
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
