"""What every subcommand's parser shares: the help formatter, option types, and configs from options."""

from __future__ import annotations

import argparse
from dataclasses import fields

DATA_SPEC_SHORT = (
    "data spec: synthetic | folder:PATH | ade20k:PATH | voc:PATH | cityscapes:PATH | camvid:PATH (see `seg2tflite data --help`)"
)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def config_from_args(cls, args: argparse.Namespace, **values):
    """``cls(...)`` from the parsed options named like its fields (lists become tuples), plus ``values``."""
    for f in fields(cls):
        if f.name not in values and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
