"""What every command line shares: user errors are one line and exit status 2, bugs keep their traceback."""
from __future__ import annotations

import errno

import pytest

from ray_al.cli import run_main


def _raises(exc: BaseException):
    def body() -> int:
        raise exc
    return body


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG])
def test_a_full_or_read_only_disk_is_a_user_error_naming_the_path(code, capsys, monkeypatch):
    monkeypatch.delenv("RAY_AL_DEBUG", raising=False)
    assert run_main(_raises(OSError(code, "cannot write /runs/x/ledger.parquet: disk trouble"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/runs/x/ledger.parquet" in err and "Traceback" not in err


def test_other_os_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("RAY_AL_DEBUG", raising=False)
    with pytest.raises(OSError):
        run_main(_raises(OSError(errno.EBADF, "bad file descriptor")))


def test_ray_al_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setenv("RAY_AL_DEBUG", "1")
    with pytest.raises(OSError):
        run_main(_raises(OSError(errno.ENOSPC, "cannot write x: No space left on device")))


def test_a_body_that_succeeds_returns_its_status():
    assert run_main(lambda: 0) == 0
