"""The one table of settings to flags (``seg2tflite.app.flags``) against the real parser and the source:
every flag it names exists, every ``setting(name)`` in the source is in it or deliberately flagless,
and no refusal of the library floors names a flag of its own."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from seg2tflite.app.cli import build_parser
from seg2tflite.app.compress_config import METHODS
from seg2tflite.app.flags import COMMAND_LINE_NAMES, FLAGLESS, METHOD_SETTINGS, SETTING_FLAGS, flag_wording
from seg2tflite.errors import setting

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("seg2tflite", "models", "calibration", "converters", "eval", "app")
LIBRARY_FLOORS = FLOORS[:-1]


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands', however deep."""
    found = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= parser_options(child)
    return found


def sources(floors) -> list[Path]:
    paths = []
    for floor in floors:
        root = ROOT / floor
        paths += [p for p in sorted(root.rglob("*.py")) if not (root / p.relative_to(root).parts[0]).is_symlink()]
    return paths


def setting_names(path: Path) -> list[tuple[int, str | None]]:
    """(line, first argument) of every ``setting(...)`` call in ``path`` (None: not a string literal)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setting" and node.args:
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            calls.append((node.lineno, first.value if literal else None))
    return calls


def test_every_flag_of_the_table_is_an_option_of_the_parser():
    options = parser_options(build_parser())
    assert not set(SETTING_FLAGS.values()) - options, "flags in SETTING_FLAGS that no subcommand takes"


def test_the_table_is_one_to_one():
    assert len(set(SETTING_FLAGS.values())) == len(SETTING_FLAGS)
    assert not set(SETTING_FLAGS) & set(METHOD_SETTINGS)
    assert not FLAGLESS & set(COMMAND_LINE_NAMES)


def test_method_settings_are_parts_of_a_methods_spec():
    for part in METHOD_SETTINGS.values():
        kind, _, value = part.partition(":")
        assert kind in METHODS and value.isupper(), part


def test_every_setting_named_in_the_source_is_in_the_table_or_flagless():
    known = set(COMMAND_LINE_NAMES) | FLAGLESS
    unknown = []
    for path in sources(FLOORS):
        for line, name in setting_names(path):
            # a name passed through a parameter (data.spec's ``option``) is checked where it is given
            if name is not None and name not in known:
                unknown.append(f"{path.relative_to(ROOT)}:{line}: setting({name!r})")
    assert not unknown, "\n".join(unknown)


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"`seg2tflite [^`]*(`|$)")  # a whole command to run, as `seg2tflite demo --out DIR`


def raise_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal inside a ``raise`` statement of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((part.lineno, part.value))
    return found


def test_library_refusals_name_no_flag_of_their_own():
    """A library floor names a setting through ``setting()``: its Python name from Python, the
    table's flag on the command line; a flag written into its message would be wrong for one of them."""
    bad = []
    for path in sources(LIBRARY_FLOORS):
        for line, text in raise_literals(path):
            if FLAG.search(COMMAND.sub("", text)):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(SETTING_FLAGS))
def test_setting_names_the_python_name_or_the_flag(name):
    assert setting(name) == name
    assert setting(name, "X", f"{name}=X") == f"{name}=X"
    with flag_wording():
        assert setting(name) == SETTING_FLAGS[name]
        assert setting(name, "X", f"{name}=X") == f"{SETTING_FLAGS[name]} X"


def test_flagless_and_method_settings():
    with flag_wording():
        assert setting("min_params") == "min_params"
        assert setting("sparsity") == "prune:SPARSITY"
        assert setting("data", python="data_spec") == "--data"
    assert setting("data", python="data_spec") == "data_spec"
