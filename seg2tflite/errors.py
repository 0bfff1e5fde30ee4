"""The one exception type the command line turns into a clear one-line message, and SIGTERM's."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do about it.

    The command line exits with ``exit_code`` (2 unless a subclass says otherwise)."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler the command line installs, so ``finally``
    blocks run and temporaries are removed (a BaseException: ``except Exception`` lets it pass)."""
