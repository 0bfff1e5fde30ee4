"""What every subcommand's parser shares: the help formatter, option types, and configs from options."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields

from seg2tflite.errors import UserError

DATA_SPEC_SHORT = (
    "data spec: synthetic | folder:PATH | ade20k:PATH | voc:PATH | cityscapes:PATH | camvid:PATH (see `seg2tflite data --help`)"
)
MAX_CLASSES = 255  # masks hold 8-bit class indices and 255 marks ignored pixels


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to an option's help, unless its help already says what the default is
    or there is none to show (a None default means "decided later", and the help says by what)."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class UsageError(UserError):
    """An option argparse refused; the command line prints it as its one error line."""


class Parser(argparse.ArgumentParser):
    """argparse, with a refused option answered like every other refusal: the usage, then one
    ``seg2tflite: error:`` line naming the subcommand and the option (exit 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def config_from_args(cls, args: argparse.Namespace, **values):
    """``cls(...)`` from the parsed options named like its fields (lists become tuples), plus ``values``."""
    for f in fields(cls):
        if f.name not in values and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _number(text: str, cast):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_input_size(parser: argparse.ArgumentParser, help: str) -> None:
    """The ``--input-size H W`` option every command that takes a size shares."""
    parser.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None, help=help)


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def class_count(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= MAX_CLASSES:
        raise argparse.ArgumentTypeError(
            f"must be 1..{MAX_CLASSES}, got {text} (masks hold 8-bit class indices, 255 marks ignored pixels)"
        )
    return value


def finite_float(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def add_tflite_options(parser: argparse.ArgumentParser, defaults) -> None:
    """The options that shape every .tflite file, shared by ``convert`` and ``demo`` (``defaults``:
    a config with ``image_input``, ``image_output``, ``int8_ranges`` and ``int8_bias_correction``)."""
    from seg2tflite.converters.int8_range_rules import RANGE_METHODS

    parser.add_argument(
        "--input", dest="image_input", default=defaults.image_input, choices=["float", "uint8"],
        help="what every .tflite takes: a normalised float image, or RGB uint8 pixels (normalisation in the graph; "
        "the form MediaPipe's ImageSegmenter loads)",
    )  # fmt: skip
    parser.add_argument(
        "--output", dest="image_output", default=defaults.image_output, choices=["logits", "classes", "lowres"],
        help="what every .tflite returns: float logits at the input size, the int32 class map (argmax in the graph), "
        "or the logits at the model's output stride (the final resize left to the app)",
    )  # fmt: skip
    parser.add_argument(
        "--int8-ranges", default=defaults.int8_ranges, choices=RANGE_METHODS,
        help="how full int8 chooses each activation's range: min/max, the 99.99th percentiles, the least int8 error, "
        "or auto (the best of the three on held-out calibration images)",
    )  # fmt: skip
    parser.add_argument(
        "--int8-bias-correction", action=argparse.BooleanOptionalAction, default=defaults.int8_bias_correction,
        help="take the full-int8 weights' mean rounding error on the calibration images out of each layer's bias",
    )  # fmt: skip
