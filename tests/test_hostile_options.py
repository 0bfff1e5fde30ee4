"""Every numeric option of every command (issue 28, item 11), found by walking the real parsers:
NaN, infinity and negative values are refused in one line before anything runs."""

import argparse
import math

import pytest

from seg2tflite.app.cli import build_parser, main
from seg2tflite.app.cli_options import finite_float

SIGNED = (finite_float,)  # a normalisation mean may be any finite number


def _commands(parser, prefix=()):
    """(argv prefix, parser) of every (sub)command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*prefix, name))


def _numeric(action) -> bool:
    if action.type in (int, float) or getattr(action.type, "__module__", "") == "seg2tflite.app.cli_options":
        return True
    default = action.default[0] if isinstance(action.default, list) and action.default else action.default
    return action.type is None and isinstance(default, (int, float)) and not isinstance(default, bool)


NUMERIC = [
    (prefix, action)
    for prefix, parser in _commands(build_parser())
    for action in parser._actions
    if action.option_strings and action.nargs != 0 and _numeric(action)
]


def test_the_walk_finds_the_options():
    found = {(" ".join(p), a.option_strings[-1]) for p, a in NUMERIC}
    assert {("latency", "--warmup"), ("bench", "--warmup"), ("train", "--lr"), ("convert", "--mean")} <= found
    assert len(found) > 40


@pytest.mark.parametrize("prefix, action", NUMERIC, ids=[f"{' '.join(p)} {a.option_strings[-1]}" for p, a in NUMERIC])
def test_every_numeric_option_refuses_nan_infinity_and_negatives(capsys, prefix, action):
    assert action.type not in (int, float, None), "a numeric option parsed without a checking type"
    option = action.option_strings[-1]
    values = ["nan", "inf", "-inf"] + ([] if action.type in SIGNED else ["-5"])
    for value in values:
        count = action.nargs if isinstance(action.nargs, int) else 1
        argv = [*prefix, option, *([value] * count)]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("seg2tflite: error: ") and option in err[-1] and "Traceback" not in "\n".join(err), err
    assert action.type("1") == 1 or math.isclose(action.type("1"), 1)
