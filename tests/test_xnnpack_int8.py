"""int8 ops rewritten into forms XNNPACK delegates (``converters.xnnpack_int8``).

One token-attention block, written as onnx2tf writes SegFormer's (``q @ k^T``, then ``attn @ v``
as ``v^T @ attn^T`` with the SOFTMAX output on the right), converted to full int8 by the real TF
converter: before the rewrite XNNPACK leaves its int8 BATCH_MATMULs to the builtin kernels,
after it every matmul's right-hand zero point is 0, XNNPACK takes them, and the file computes
what the converter's file computes to within the re-rounding of the symmetric ranges. And a
residual block whose ADD output two branches read, so that its RELU stands alone: XNNPACK takes
no int8 RELU, the rewritten ADD of 0 with a fused RELU it takes, bit-identical on the builtin kernels.
The same for RELU6, RELU_N1_TO_1 and RELU_0_TO_1. And a LayerNorm's mean subtraction whose mean
is near zero: XNNPACK refuses the SUB while the mean's scale is under 1/1024 of the output's,
takes it once the mean's scale is widened. And every op of ``FLOAT_ISLANDS``: XNNPACK leaves it
to the builtin kernels in int8, takes it as a float island, which computes what the int8 kernel
computes to within an output step.
"""

import numpy as np
import pytest

from seg2tflite.calibration.representative import calibration_from_array
from seg2tflite.converters.ops import op_report
from seg2tflite.converters.runtimes import TFLiteRunner
from seg2tflite.converters.tflite_graph import TFLiteGraph
from seg2tflite.converters.tflite_variants import build_tflite
from seg2tflite.converters.xnnpack_int8 import FLOAT_ISLANDS, xnnpack_int8_forms

pytestmark = pytest.mark.chain

SIZE, C = (8, 8), 16


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """The SavedModel, its calibration images, and the converter's own full-int8 file."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    stem = tf.constant(rng.normal(size=(1, 1, 3, C)).astype(np.float32))
    wq, wk, wv = (tf.constant(rng.normal(size=(C, C)).astype(np.float32) / 4) for _ in range(3))

    def block(x):
        tokens = tf.reshape(tf.nn.conv2d(x, stem, 1, "SAME"), (1, SIZE[0] * SIZE[1], C)) + 0.5
        q, k, v = (tf.matmul(tokens, w) for w in (wq, wk, wv))
        attn = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / 4.0)
        out = tf.matmul(v, attn, transpose_a=True, transpose_b=True)  # (attn @ v)^T, softmax on the right
        return tf.reshape(tf.transpose(out, (0, 2, 1)), (1, *SIZE, C))

    folder = tmp_path_factory.mktemp("attention")
    module = tf.Module()
    module.f = tf.function(block, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    tf.saved_model.save(module, str(folder / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.normal(size=(16, 3, *SIZE)).astype(np.float32), "random")
    return folder / "saved_model", calib, _int8_full(folder / "saved_model", calib)


def _int8_full(saved_model, calib) -> bytes:
    """The TF converter's own full-int8 file, before any rewrite."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calib.representative_dataset()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def _converted_int8(block, folder, rng):
    """The converter's full-int8 file of ``block`` (saved in ``folder``) and its calibration images."""
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(block, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    tf.saved_model.save(module, str(folder / "saved_model"), signatures=module.f)
    calib = calibration_from_array(rng.normal(size=(16, 3, *SIZE)).astype(np.float32), "random")
    return _int8_full(folder / "saved_model", calib), calib


def _matmul_rhs_zero_points(content: bytes) -> list[int]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] == "BATCH_MATMUL"]
    return [int(tensors[int(op["inputs"][1])]["quantization_parameters"]["zero_points"][0]) for op in ops]


def test_matmuls_get_zero_point_zero_and_xnnpack_takes_them(attention):
    _, _, converted = attention
    assert any(zp != 0 for zp in _matmul_rhs_zero_points(converted))
    before = TFLiteRunner(converted).delegation["not_delegated"]
    assert before.get("BATCH_MATMUL") == 2, before

    rewritten, report = xnnpack_int8_forms(converted)
    assert report == {
        "matmuls": 2,
        "symmetric": 1,
        "swapped": 1,
        "left": 0,
        "activations_as_add": 0,
        "widened": 0,
        "float_islands": 1,
    }
    assert _matmul_rhs_zero_points(rewritten) == [0, 0]
    assert TFLiteRunner(rewritten).delegation["not_delegated"] == {}  # the SOFTMAX a float island
    assert xnnpack_int8_forms(rewritten) == (
        rewritten,
        {"matmuls": 2, "symmetric": 2, "swapped": 0, "left": 0, "activations_as_add": 0, "widened": 0, "float_islands": 0},
    )


def test_rewritten_file_computes_what_the_converter_file_computes(attention):
    _, calib, converted = attention
    rewritten, _ = xnnpack_int8_forms(converted)
    original = TFLiteRunner(converted, xnnpack=False)
    candidates = {"builtin": TFLiteRunner(rewritten, xnnpack=False), "xnnpack": TFLiteRunner(rewritten)}
    step = original.io_quantization["output"]["scale"]
    x = calib.images[:4]
    reference = original(x)
    spread = np.abs(reference).max()
    for name, runner in candidates.items():
        drift = np.abs(runner(x) - reference)
        # a few output steps from the symmetric ranges' re-rounding, nowhere a wrong value
        assert drift.max() <= 6 * step and drift.mean() <= step, (name, drift.max() / step, spread / step)


def test_full_int8_variant_is_written_rewritten(attention):
    saved_model, calib, converted = attention
    built = build_tflite(saved_model, "full_int8", calib)
    assert _matmul_rhs_zero_points(built) == [0, 0]
    assert xnnpack_int8_forms(built)[1]["swapped"] == 0  # nothing left to do: the variant is the rewritten file


ACTIVATIONS = {
    "RELU": lambda tf, s: tf.nn.relu(s),
    "RELU6": lambda tf, s: tf.nn.relu6(s),
    "RELU_N1_TO_1": lambda tf, s: tf.clip_by_value(s, -1.0, 1.0),
    "RELU_0_TO_1": lambda tf, s: tf.maximum(0.0, tf.minimum(1.0, s)),  # onnx2tf's HardSigmoid clamp
}


def _residual_block(activation: str):
    """conv, a residual ADD, ``activation``, conv, and the skip: the ADD's output is read by the
    activation and by the skip, so the converter cannot fuse the activation into it."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w1, w2 = (tf.constant(rng.normal(size=(3, 3, c, C)).astype(np.float32) / 3) for c in (3, C))

    def block(x):
        y = tf.nn.conv2d(x, w1, 1, "SAME")
        s = y + tf.nn.conv2d(y, w2, 1, "SAME")
        return tf.nn.conv2d(ACTIVATIONS[activation](tf, s), w2, 1, "SAME") + s

    return block, rng


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_standalone_activation_becomes_an_add_xnnpack_takes(tmp_path, name):
    block, rng = _residual_block(name)
    converted, calib = _converted_int8(block, tmp_path, rng)
    assert TFLiteRunner(converted).delegation["not_delegated"] == {name: 1}

    rewritten, report = xnnpack_int8_forms(converted)
    assert report["activations_as_add"] == 1 and TFLiteRunner(rewritten).delegation["not_delegated"] == {}
    x = calib.images[:4]
    assert np.array_equal(TFLiteRunner(rewritten, xnnpack=False)(x), TFLiteRunner(converted, xnnpack=False)(x))
    step = TFLiteRunner(converted).io_quantization["output"]["scale"]
    assert np.abs(TFLiteRunner(rewritten)(x) - TFLiteRunner(converted, xnnpack=False)(x)).max() / step <= 2.001


def test_relu_0_to_1_reaching_past_1_is_left_alone(tmp_path):
    """Where RELU_0_TO_1's output range ends above 1, saturation would not clamp at 1: no ADD."""
    block, rng = _residual_block("RELU_0_TO_1")
    converted, _ = _converted_int8(block, tmp_path, rng)
    g = TFLiteGraph.read(converted)
    (relu,) = [op for op in g.graph.operators if g.name(op) == "RELU_0_TO_1"]
    g.graph.tensors[int(relu.outputs[0])].quantization.scale *= 2  # the range now ends near 2
    widened = g.write()
    assert xnnpack_int8_forms(widened)[1]["activations_as_add"] == 0


ISLANDS = {
    "HARD_SWISH": lambda tf, s: s * tf.nn.relu6(s + 3) / 6,
    "GELU": lambda tf, s: tf.nn.gelu(s, approximate=False),
    "SOFTMAX": lambda tf, s: tf.nn.softmax(s),
    "AVERAGE_POOL_2D": lambda tf, s: tf.nn.avg_pool2d(s, 3, 1, "SAME"),
    "RSQRT": lambda tf, s: tf.math.rsqrt(tf.reduce_mean(s * s, -1, keepdims=True) + 1.0),
    "ABS": lambda tf, s: tf.abs(s),
    "SQUARED_DIFFERENCE": lambda tf, s: tf.math.squared_difference(s, tf.reduce_mean(s, -1, keepdims=True)),
    "MINIMUM": lambda tf, s: tf.minimum(s, 0.5),
    "MAXIMUM": lambda tf, s: tf.maximum(s, -0.5),
    "EXP": lambda tf, s: tf.exp(s / 8),
    "LOG": lambda tf, s: tf.math.log(tf.nn.relu(s) + 1),
}


def test_every_float_island_op_is_tried():
    assert set(ISLANDS) == FLOAT_ISLANDS


@pytest.mark.parametrize("name", ISLANDS)
def test_int8_op_xnnpack_takes_only_in_float_becomes_a_float_island(tmp_path, name):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    w1, w2 = (tf.constant(rng.normal(size=(3, 3, c, C)).astype(np.float32) / 3) for c in (3, C))

    def block(x):
        y = tf.nn.conv2d(x, w1, 1, "SAME")
        return ISLANDS[name](tf, y + tf.nn.conv2d(y, w2, 1, "SAME"))  # the op's output is the model's

    converted, calib = _converted_int8(block, tmp_path, rng)
    assert name in TFLiteRunner(converted).delegation["not_delegated"]
    assert op_report(converted).float_islands == {}

    rewritten, report = xnnpack_int8_forms(converted)
    assert report["float_islands"] >= 1 and TFLiteRunner(rewritten).delegation["not_delegated"] == {}
    assert name in op_report(rewritten).float_islands and op_report(rewritten).float_ops == []
    assert xnnpack_int8_forms(rewritten)[1]["float_islands"] == 0  # nothing int8 left to move
    x = calib.images[:4]
    step = TFLiteRunner(converted).io_quantization["output"]["scale"]
    for xnnpack in (False, True):  # XNNPACK's convolutions round apart from the builtin ones: like with like
        steps = np.abs(TFLiteRunner(rewritten, xnnpack=xnnpack)(x) - TFLiteRunner(converted, xnnpack=xnnpack)(x)) / step
        assert steps.max() <= 1.001 and steps.mean() <= 0.1, (xnnpack, steps.max(), steps.mean())  # the last rounding


def test_near_zero_mean_subtraction_is_widened_so_xnnpack_takes_it(tmp_path):
    import tensorflow as tf

    rng, channels = np.random.default_rng(2), 64
    w = rng.normal(size=(3, 3, 3, channels)).astype(np.float32)
    w -= 0.999 * w.mean(axis=-1, keepdims=True)  # channel means a thousandth of what they were
    mean_weights = tf.constant(np.full((1, 1, channels, 1), 1 / channels, np.float32))

    def block(x):
        y = tf.nn.conv2d(x, tf.constant(w), 1, "SAME")
        return y - tf.nn.conv2d(y, mean_weights, 1, "SAME")  # the centring of a 1x1-conv LayerNorm

    converted, calib = _converted_int8(block, tmp_path, rng)
    assert TFLiteRunner(converted).delegation["not_delegated"] == {"SUB": 1}

    rewritten, report = xnnpack_int8_forms(converted)
    assert report["widened"] == 1 and TFLiteRunner(rewritten).delegation["not_delegated"] == {}
    x = calib.images[:4]
    step = TFLiteRunner(converted).io_quantization["output"]["scale"]
    reference = TFLiteRunner(converted, xnnpack=False)(x)
    for runner in (TFLiteRunner(rewritten, xnnpack=False), TFLiteRunner(rewritten)):
        steps = np.abs(runner(x) - reference).max() / step
        assert steps <= 1 + 1e-5, steps  # a thousandth of a step lost: at most one rounding flips
    assert xnnpack_int8_forms(rewritten)[1]["widened"] == 0
