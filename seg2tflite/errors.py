"""The one exception type the command line turns into a clear one-line message, SIGTERM's, and how
messages name a setting (a command-line flag, or a Python argument when called from Python)."""

from __future__ import annotations

import contextlib
import contextvars
import errno
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do about it.

    The command line exits with ``exit_code`` (2 unless a subclass says otherwise)."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler the command line installs, so ``finally``
    blocks run and temporaries are removed (a BaseException: ``except Exception`` lets it pass)."""


_COMMAND_LINE = contextvars.ContextVar("seg2tflite_command_line", default=False)


def on_command_line() -> bool:
    """Whether ``seg2tflite.app.cli.main`` is running (else the caller is Python code)."""
    return _COMMAND_LINE.get()


def setting(flag: str, python: str) -> str:
    """How a message names a setting: its flag while the command line runs (``--input-size``),
    else the Python name the caller passed it as (``input_size``)."""
    return flag if on_command_line() else python


@contextlib.contextmanager
def command_line_wording() -> Iterator[None]:
    """Within this block messages name command-line flags (``seg2tflite.app.cli.main`` runs in one)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a library's multi-line text joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def os_error_line(error: OSError, option: str | None = "--out") -> str:
    """One line for an operating-system error while reading or writing."""
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error) or type(error).__name__
    elsewhere = f"choose another {option}" if option else "choose another place to write"
    if error.errno == errno.ENOSPC:
        return f"{where}no space left on the device; free some space or {elsewhere} (the unfinished file was not kept)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}cannot write here ({reason}); {elsewhere}"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where}{reason}: a file is in the way of a folder; {elsewhere}"
    return f"{where}{reason}; rerun with --debug for the traceback"
