"""The ``seg2tflite`` command line: one subcommand per job, heavy imports only when a job runs."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from seg2tflite.app.cli_options import Formatter, Parser
from seg2tflite.app.commands import (
    bench,
    compress,
    convert,
    data,
    demo,
    evaluate,
    latency,
    models,
    profile,
    report,
    train,
)
from seg2tflite.app.flags import COMMAND_LINE_NAMES
from seg2tflite.app.matrix import command as matrix_command
from seg2tflite.errors import Terminated, UserError, command_line_wording, one_line, os_error_line
from seg2tflite.quiet import VERBOSE_VARIABLE, quiet_libraries

# -- the command line ------------------------------------------------------------------------

# The subcommands in help order: each module's ``add(sub)`` declares it, ``run(args)`` (its handler) does it.
COMMANDS = (
    demo,
    data,
    models,
    train,
    convert,
    evaluate,
    bench,
    report,
    compress,
    latency,
    profile,
    matrix_command,
)


def build_parser() -> Parser:
    parser = Parser(
        prog="seg2tflite",
        description="Carry PyTorch segmentation models to TensorFlow Lite and measure what each step costs.",
        formatter_class=Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (implies --verbose)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own log lines (TensorFlow, absl, LiteRT)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def keep_tool_caches_in_temp() -> None:
    """Point matplotlib's and Keras's config/cache folders (by default ~/.cache/matplotlib,
    ~/.config/matplotlib, ~/.keras) into the system temp dir, so a run writes nothing outside its
    output folder and temp. Settings the user made are kept; worker processes inherit them."""
    base = Path(tempfile.gettempdir()) / f"seg2tflite-{getattr(os, 'getuid', lambda: 'user')()}"
    for variable, folder in (("MPLCONFIGDIR", "matplotlib"), ("KERAS_HOME", "keras")):
        if variable not in os.environ:
            (base / folder).mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(base / folder)


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a refusal is one ``seg2tflite: error:`` line on stderr (exit 2, or the
    error's own ``exit_code``), never a traceback unless ``--debug``. Messages name flags."""
    with command_line_wording(COMMAND_LINE_NAMES):
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:  # a refused option: argparse printed the usage
        print(f"seg2tflite: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.verbose or args.debug:
        os.environ[VERBOSE_VARIABLE] = "1"
    quiet_libraries()
    keep_tool_caches_in_temp()
    # SIGTERM (kill, a batch system's time limit) unwinds like Ctrl-C, so every temporary is removed.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.handler(args)
    except UserError as e:
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # disk full, no permission, a file where a folder should be...
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"seg2tflite: error: {os_error_line(e, _output_option(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("seg2tflite: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        _close_progress_bars()
        print("seg2tflite: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _close_progress_bars() -> None:
    """Close the progress bars still open, so the last line is on a line of its own and no bar is
    redrawn after it (an open tqdm bar is closed, and drawn again, when it is collected)."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot draw any more is closed enough
            pass
    sys.stderr.flush()


def _output_option(args) -> str | None:
    """The option naming where this command writes, for the advice in an OS error."""
    if getattr(args, "out", None):
        return "--out"
    if getattr(args, "json", None):
        return "--json"
    return None


if __name__ == "__main__":
    sys.exit(main())
