"""The per-op profile: each op cut out alone computes what it computes inside the whole file, every
op of the file is timed once, and ``seg2tflite bench --profile`` prints the table."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from seg2tflite.app.cli import main
from seg2tflite.converters.ops import op_report
from seg2tflite.eval.profile import format_profile, profile_artifact, profile_tflite, single_op_model

pytestmark = pytest.mark.chain

SIZE = (16, 16)


def _build(calibrated: bool) -> bytes:
    """A small graph with constants, an activation, a matmul and a softmax; full int8 if ``calibrated``."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
    m = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    def graph(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME") + 0.5)
        return tf.nn.softmax(tf.reshape(tf.reshape(y, [-1, 8]) @ m, [1, *SIZE, 4]))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    if calibrated:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(size=(1, *SIZE, 3)).astype(np.float32)] for _ in range(8))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@pytest.fixture(scope="module", params=["float32", "full_int8"])
def tflite(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / f"model_{request.param}.tflite"
    path.write_bytes(_build(request.param == "full_int8"))
    return path


def test_each_op_alone_computes_what_it_does_in_the_file(tflite):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from seg2tflite.converters.tflite_graph import read_model

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    whole = Interpreter(model_path=str(tflite), experimental_preserve_all_tensors=True, experimental_op_resolver_type=builtin)
    whole.allocate_tensors()
    (given,) = whole.get_input_details()
    x = np.random.default_rng(1).normal(size=given["shape"]).astype(np.float32)
    if given["dtype"] != np.float32:
        scale, zero = given["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(given["dtype"])
    whole.set_tensor(given["index"], x)
    whole.invoke()
    model = read_model(tflite.read_bytes())
    graph = model.subgraphs[0]
    for index, op in enumerate(graph.operators):
        alone = Interpreter(model_content=single_op_model(model, index), experimental_op_resolver_type=builtin)
        alone.allocate_tensors()
        names = {d["name"]: d["index"] for d in alone.get_input_details()}
        for t in op.inputs:
            tensor = graph.tensors[int(t)] if int(t) >= 0 else None
            if tensor is not None and tensor.name.decode() in names:
                alone.set_tensor(names[tensor.name.decode()], whole.get_tensor(int(t)))
        alone.invoke()
        (out,) = alone.get_output_details()
        np.testing.assert_array_equal(alone.get_tensor(out["index"]), whole.get_tensor(int(op.outputs[0])), err_msg=str(index))


def test_every_op_is_timed_once(tflite):
    profile = profile_tflite(tflite, threads=1, runs=3, progress=False)
    counts = op_report(tflite.read_bytes()).counts
    assert Counter(t.op for t in profile.ops) == Counter(counts)
    assert [t.index for t in profile.ops] == list(range(sum(counts.values())))
    assert profile.whole_ms > 0 and all(t.median_ms > 0 for t in profile.ops) and profile.untimed == []
    assert sum(row["count"] for row in profile.by_type()) == len(profile.ops)
    if "float32" in tflite.name:  # XNNPACK takes every float op of this graph
        assert all(t.delegated and t.dtype == "float32" for t in profile.ops), profile.ops
    else:
        assert {t.dtype for t in profile.ops if t.op == "CONV_2D"} == {"int8"}
    isolated = profile_artifact(tflite, threads=1)  # the same, from a fresh process
    assert [(t.op, t.delegated) for t in isolated.ops] == [(t.op, t.delegated) for t in profile.ops]
    assert f"its {len(profile.ops)} ops one at a time" in format_profile(isolated)


def test_bench_profile_on_the_command_line(tflite, tmp_path, capsys):
    assert (
        main(["bench", "--artifact", str(tflite), "--input-size", "16", "16", "--runs", "2", "--warmup", "0", "--profile"]) == 0
    )
    out = capsys.readouterr().out
    assert "one at a time" in out and "CONV_2D" in out
    onnx_only = tmp_path / "model.onnx"
    onnx_only.write_bytes(b"")
    assert main(["bench", "--artifact", str(onnx_only), "--input-size", "16", "16", "--profile"]) == 2
    assert capsys.readouterr().err.strip() == (
        "seg2tflite: error: --profile: no .tflite among --artifact; only a .tflite has ops to profile"
    )
