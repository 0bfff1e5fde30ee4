"""`seg2tflite profile`: every .tflite of a run folder profiled op by op into profile.json and
rendered as report/profile.md; a file that cannot be profiled fails alone, int16x8 is skipped,
re-profiling one model keeps the others, and the report re-renders it without profiling."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from seg2tflite.app.cli import main
from seg2tflite.converters.stages import label
from seg2tflite.eval import profile_run
from seg2tflite.eval.profile import OpTime, Profile
from seg2tflite.eval.profile_run import PROFILE_FILE, run_profile
from seg2tflite.eval.record import RecordRow, record_results
from seg2tflite.eval.report import render_profile_md

pytestmark = pytest.mark.chain

NAME, OTHER = "tiny_profile_cnn", "other_model"
PROFILED = ("float32", "full_int8")


def _tflite(int8: bool) -> bytes:
    """A conv, a ReLU and a softmax on a 16x16 image; full int8 when ``int8``."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    def graph(x):
        return tf.nn.softmax(tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME")))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(size=(1, 16, 16, 3)).astype(np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of two models, NAME's profiled through the command line: two real files, one
    that is no .tflite inside (its profile fails) and an int16x8 one (skipped, never opened).
    demo.json names OTHER only, as one written before demo.json listed the run's models."""
    run = tmp_path_factory.mktemp("run")
    (run / "demo.json").write_text(json.dumps({"config": {"models": [OTHER]}}))
    convert = run / "models" / NAME / "convert"
    convert.mkdir(parents=True)
    for stage in PROFILED:
        (convert / f"model_{stage}.tflite").write_bytes(_tflite(stage == "full_int8"))
    (convert / "model_dynamic_int8.tflite").write_bytes(b"not a flatbuffer")
    (convert / "model_int16x8.tflite").write_bytes(b"")
    assert main(["profile", "--run", str(run), "--models", NAME, "--threads", "1"]) == 0
    return run


def test_every_file_found_is_profiled_or_says_why_not(run):
    record = json.loads((run / PROFILE_FILE).read_text())
    assert list(record["models"]) == [NAME]
    model = record["models"][NAME]
    assert model["threads"] == 1 and model["versions"]["ai-edge-litert"]
    variants = model["variants"]
    assert list(variants) == ["float32", "dynamic_int8", "full_int8", "int16x8"]  # stage order
    for stage in PROFILED:
        v = variants[stage]
        assert v["file"] == f"models/{NAME}/convert/model_{stage}.tflite"
        assert v["ops"] > 0 and 0 <= v["delegated"] <= v["ops"] and v["whole_ms"] > 0
        assert sum(r["count"] for r in v["by_type"]) == v["ops"] - len(v["untimed"])
        assert sum(r["ms"] for r in v["by_type"]) == pytest.approx(v["sum_ms"], abs=1e-3)
        assert 0 < len(v["slowest"]) <= 5
    assert {r["dtype"] for r in variants["full_int8"]["by_type"] if r["op"] == "CONV_2D"} == {"int8"}
    assert variants["dynamic_int8"]["failed"].startswith("the profiling process failed")
    assert "reference kernels" in variants["int16x8"]["skipped"]


def test_the_report_names_every_variant(run):
    md = (run / "report" / "profile.md").read_text()
    assert md == render_profile_md(run)
    assert f"## `{NAME}`" in md and "threads: 1)" in md
    for stage in ("float32", "dynamic_int8", "full_int8", "int16x8"):
        assert f"| {label(stage)} |" in md
    assert "| TFLite dynamic int8 | - | - | - | profile failed: " in md
    assert "| TFLite int16x8 | - | - | - | not profiled (see above) |" in md
    assert "CONV_2D int8" in md


def test_report_re_renders_it_without_profiling(run, monkeypatch):
    record_results(run, [RecordRow(NAME, "float32", "x.tflite", "litert", (16, 16), "synthetic", "test", 1, None, 1.0, 1.0,
                                   0.5, 0.5, {"c0": 0.5})])  # fmt: skip
    before = (run / "report" / "profile.md").read_bytes()
    (run / "report" / "profile.md").unlink()
    stamp = (run / PROFILE_FILE).stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the report profiled a file")

    monkeypatch.setattr(profile_run, "profile_artifact", refuse)
    assert main(["report", "--run", str(run)]) == 0
    assert (run / "report" / "profile.md").read_bytes() == before
    assert (run / PROFILE_FILE).stat().st_mtime_ns == stamp


def test_profiling_one_model_keeps_the_others(run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "models" / OTHER / "convert").mkdir(parents=True)
    (copy / "models" / OTHER / "convert" / "model_float32.tflite").write_bytes(b"")
    kept = json.loads((copy / PROFILE_FILE).read_text())["models"][NAME]

    def fake(path, threads=2, xnnpack=True):
        return Profile(str(path), threads, xnnpack, 1.0, [OpTime(0, "ADD", "float32", True, 0.5)])

    monkeypatch.setattr(profile_run, "profile_artifact", fake)
    models = json.loads(run_profile(copy, (OTHER,), progress=False).read_text())["models"]
    assert list(models) == [NAME, OTHER] and models[NAME] == kept
    assert models[OTHER]["variants"]["float32"]["by_type"] == [
        {"op": "ADD", "dtype": "float32", "xnnpack": True, "count": 1, "ms": 0.5}
    ]
    models = json.loads(run_profile(copy, (NAME,), progress=False).read_text())["models"]
    assert list(models) == [NAME, OTHER] and models[NAME]["variants"]["float32"]["whole_ms"] == 1.0
    assert "ADD float32 x1: 0.50" in render_profile_md(copy)


def test_an_unknown_model_is_one_line_on_the_command_line(run):
    done = subprocess.run(
        [sys.executable, "-m", "seg2tflite.app", "profile", "--run", str(run), "--models", "no_such_model"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"seg2tflite: error: --models no_such_model: not in this run; choose from {OTHER}, {NAME}"
