"""The one exception type the command line turns into a clear one-line message, SIGTERM's, and how
messages name a setting (a command-line flag, or a Python argument when called from Python)."""

from __future__ import annotations

import contextlib
import contextvars
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
    """Whether ``seg2tflite.cli.main`` is running (else the caller is Python code)."""
    return _COMMAND_LINE.get()


def setting(flag: str, python: str) -> str:
    """How a message names a setting: its flag while the command line runs (``--input-size``),
    else the Python name the caller passed it as (``input_size``)."""
    return flag if on_command_line() else python


@contextlib.contextmanager
def command_line_wording() -> Iterator[None]:
    """Within this block messages name command-line flags (``seg2tflite.cli.main`` runs in one)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)
