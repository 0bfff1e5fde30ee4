"""The matrix file, its refusals, the table and JUnit XML, the pytest plugin's collection (fast lane: no TF)."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from seg2tflite.app.cli import main
from seg2tflite.app.matrix.report import render_junit, render_table
from seg2tflite.app.matrix.spec import load_matrix
from seg2tflite.errors import UserError

GOOD = """
[defaults]
input_size = [32, 32]
variants = ["float32", "float16"]
calib = "folder:data"
eval = "synthetic:size=32,test=4"
max_miou_drop = { float16 = 0.5 }
gates = { float_min_agreement = 0.999 }

[[entry]]
name = "mine"
module = "nets.py:build"
max_miou_drop = { float32 = 0.1 }

[[entry]]
name = "onnx-one"
onnx = "model.onnx"
variants = ["float32", "dynamic_int8"]
max_latency_ratio = { dynamic_int8 = 1.5 }
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "nets.py").write_text("def build():\n    pass\n")
    (tmp_path / "model.onnx").write_bytes(b"")
    return tmp_path


def write(folder, text):
    path = folder / "matrix.toml"
    path.write_text(text)
    return path


def test_a_matrix_merges_defaults_and_resolves_paths(folder):
    matrix = load_matrix(write(folder, GOOD))
    mine, other = matrix.entries
    assert matrix.cells == [("mine", "float32"), ("mine", "float16"), ("onnx-one", "float32"), ("onnx-one", "dynamic_int8")]
    assert mine.source == f"{folder.resolve()}/nets.py:build" and mine.calib == f"folder:{folder.resolve()}/data"
    assert mine.max_miou_drop == {"float32": 0.1, "float16": 0.5} and other.max_miou_drop == {"float32": 1.0, "dynamic_int8": 1.0}
    assert (mine.trained, other.trained) == (False, True)  # a module without weights is a random init
    assert other.max_latency_ratio == {"dynamic_int8": 1.5} and mine.gates == {"float_min_agreement": 0.999}
    config = mine.convert_config()
    assert (config.max_miou_drop, config.float_min_agreement, config.variants) == (0.5, 0.999, ("float32", "float16"))


BAD = {
    "unknown key": (
        '[[entry]]\nname = "a"\nmodule = "nets.py:build"\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "synthetic"\ncolour = 1\n',
        "unknown key 'colour'",
    ),
    "two sources": ('[[entry]]\nname = "a"\nmodule = "nets.py:build"\nonnx = "model.onnx"\n', "exactly one source"),
    "no entries": ("[defaults]\n", "no entries"),
    "bad toml": ("[[entry]\n", "not valid TOML"),
    "missing file": ('[[entry]]\nname = "a"\nmodule = "gone.py:build"\n', "gone.py is not a file"),
    "no size": ('[[entry]]\nname = "a"\nmodule = "nets.py:build"\n', "set input_size"),
    "bad variant": (
        '[defaults]\ninput_size = [32, 32]\n[[entry]]\nname = "a"\nmodule = "nets.py:build"\nvariants = ["int4"]\n',
        "'int4' is not a variant",
    ),
    "no eval": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\n[[entry]]\nname = "a"\nmodule = "nets.py:build"\n',
        "no eval data",
    ),
    "bad data": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "folder:nowhere"\n[[entry]]\nname = "a"\nmodule = "nets.py:build"\n',
        "nowhere is not a folder",
    ),
    "twice": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "synthetic"\n[[entry]]\nname = "a"\nonnx = "model.onnx"\n[[entry]]\nname = "a"\nonnx = "model.onnx"\n',
        "used twice",
    ),
    "budget": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "synthetic"\n[[entry]]\nname = "a"\nonnx = "model.onnx"\nmax_miou_drop = -1\n',
        "must be a finite number of mIoU points >= 0",
    ),
    "latency baseline": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "synthetic"\n[[entry]]\nname = "a"\nonnx = "model.onnx"\nvariants = ["full_int8"]\nmax_latency_ratio = { full_int8 = 1.2 }\n',
        "add float32 to the variants",
    ),
    "gate": (
        '[defaults]\ninput_size = [32, 32]\ncalib = "synthetic"\neval = "synthetic"\n[[entry]]\nname = "a"\nonnx = "model.onnx"\ngates = { float_min_agreement = 2.0 }\n',
        "must be a fraction in 0..1",
    ),
    "weights on a model": ('[[entry]]\nname = "a"\nmodel = "segformer_b0"\nweights = "x"\n', "weights applies to a module"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_matrix_is_one_line_naming_what_to_fix(folder, case):
    text, expected = BAD[case]
    with pytest.raises(UserError) as e:
        load_matrix(write(folder, text))
    assert expected in str(e.value) and "\n" not in str(e.value) and "matrix.toml" in str(e.value)


def test_the_command_refuses_in_one_line(tmp_path, capsys):
    assert main(["matrix", str(tmp_path / "none.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seg2tflite: error: ") and "no such matrix file" in err[0]


def cell(entry, variant, passed, gate=None, **figures):
    base = {
        "entry": entry,
        "variant": variant,
        "conversion": "ok" if passed else "gate broken",
        "miou": 0.5,
        "reference_miou": 0.5,
    }
    base.update(delta_points=0.0, budget_points=1.0, gated=True, latency_ratio=None, max_latency_ratio=None)
    return {**base, "passed": passed, "gate": gate, "failures": [gate] if gate else [], "nodes": {"convert": "host"}, **figures}


def test_the_table_and_junit_name_the_gate_that_broke():
    gate = "float16: mIoU 18.91 is 81.09 points below pytorch's 100.00 (budget 1) <&>"
    record = {
        "runner": "this process",
        "seconds": 1.5,
        "cells": [cell("a", "float32", True), cell("a", "float16", False, gate, miou=0.1891)],
    }
    table = render_table(record)
    assert "| `a` | reference (ONNX) | - | 50.00 | ref |" in table
    assert f"| `a` | float16 | gate broken | 18.91 | +0.00 | 1 | **FAIL** | {gate} |" in table
    assert table.endswith("1 of 2 cells passed (this process).")
    suite = ET.fromstring(render_junit(record)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert [c.find("failure").get("message") for c in suite if c.find("failure") is not None] == [gate]


def test_the_plugin_collects_one_item_per_cell_without_torch_or_tensorflow(folder):
    path = write(folder, GOOD)
    probe = (
        "import sys, seg2tflite.app.matrix.pytest_plugin; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    args = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "--rootdir", str(folder)]
    run = subprocess.run([*args, "--seg2tflite-matrix", str(path)], cwd=folder, capture_output=True, text=True)
    assert "matrix.toml::mine[float16]" in run.stdout and "matrix.toml::onnx-one[dynamic_int8]" in run.stdout, run.stdout
    write(folder, "[[entry]\n")
    run = subprocess.run([*args, "--seg2tflite-matrix", str(path)], cwd=folder, capture_output=True, text=True)
    assert run.returncode == 4 and "--seg2tflite-matrix:" in run.stderr and "not valid TOML" in run.stderr, run.stderr
