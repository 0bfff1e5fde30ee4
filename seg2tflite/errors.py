"""The one exception type the command line turns into a clear one-line message, SIGTERM's, and how
messages name a setting (a Python argument, or the command line's flag for it while it runs)."""

from __future__ import annotations

import contextlib
import contextvars
import errno
from collections.abc import Iterator, Mapping


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do about it.

    The command line exits with ``exit_code`` (2 unless a subclass says otherwise)."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler the command line installs, so ``finally``
    blocks run and temporaries are removed (a BaseException: ``except Exception`` lets it pass)."""


_FLAGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("seg2tflite_flags", default=None)


def on_command_line() -> bool:
    """Whether ``seg2tflite.app.cli.main`` is running (else the caller is Python code)."""
    return _FLAGS.get() is not None


def command_line_flags() -> Mapping[str, str] | None:
    """The command line's table of settings to flags while it runs, else None: a worker process
    is handed it, so its messages are worded as its parent's."""
    return _FLAGS.get()


def setting(name: str, values: str = "", python: str | None = None) -> str:
    """How a message names the setting ``name`` (its Python name, e.g. ``input_size``).

    While the command line runs, the flag its table maps ``name`` to, followed by ``values`` when
    given (``--input-size H W``); else, and for a setting the command line has no flag for,
    ``python`` when given (``input_size=(H, W)``, or the argument's name where the function calls it
    otherwise), else ``name``."""
    flags = _FLAGS.get()
    flag = None if flags is None else flags.get(name)
    if flag is None:
        return name if python is None else python
    return f"{flag} {values}" if values else flag


@contextlib.contextmanager
def command_line_wording(flags: Mapping[str, str] | None) -> Iterator[None]:
    """Within this block messages name the flags of ``flags`` ({Python setting name: flag}; the
    command line installs its table, ``seg2tflite.app.flags``); None words them as from Python."""
    token = _FLAGS.set(None if flags is None else dict(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)


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
