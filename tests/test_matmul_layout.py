"""Layout TRANSPOSEs around attention matmuls, removed from converted files (``converters.matmul_layout``).

A single-head token attention written as onnx2tf writes SegFormer's first stage (each operand
TRANSPOSEd to NCHW and RESHAPEd to (1, 1, C, H*W), the result RESHAPEd to (1, C, H, W) and
TRANSPOSEd back to NHWC), converted by the real TF converter: the rewrite removes all four
TRANSPOSEs and the float32 file computes exactly what it computed; the full-int8 variant is
built without them, every op but the softmax delegated to XNNPACK, and on the builtin kernels
it computes bit for bit what the int8 rewrite alone makes of the converter's file.
A two-head attention, whose head axis needs a real transpose, is left as it is.
"""

import numpy as np
import pytest

from seg2tflite.calibration.representative import calibration_from_array
from seg2tflite.converters.matmul_layout import drop_matmul_transposes
from seg2tflite.converters.runtimes import TFLiteRunner
from seg2tflite.converters.tflite_variants import build_tflite
from seg2tflite.converters.xnnpack_int8 import xnnpack_int8_forms

pytestmark = pytest.mark.chain

SIZE, C = (8, 12), 16  # not square: a swapped H and W must show


def _attention_saved_model(folder, heads: int):
    import tensorflow as tf

    rng = np.random.default_rng(heads)
    stem = tf.constant(rng.normal(size=(1, 1, 3, C)).astype(np.float32))
    wq, wk, wv = (tf.constant(rng.normal(size=(1, 1, C, C)).astype(np.float32) / 4) for _ in range(3))
    reduce = tf.constant(rng.normal(size=(2, 2, C, C)).astype(np.float32) / 8)
    tokens, kv_tokens, d = SIZE[0] * SIZE[1], SIZE[0] * SIZE[1] // 4, C // heads

    def heads_first(x, n):  # NHWC -> NCHW -> (1, heads, d, n), as onnx2tf keeps x.reshape(B, heads, d, N)
        return tf.reshape(tf.transpose(x, (0, 3, 1, 2)), (1, heads, d, n))

    def block(x):
        x = tf.nn.conv2d(x, stem, 1, "SAME")
        reduced = tf.nn.conv2d(x, reduce, 2, "VALID")  # SegFormer's spatial reduction of keys/values
        q = heads_first(tf.nn.conv2d(x, wq, 1, "SAME"), tokens)
        k = heads_first(tf.nn.conv2d(reduced, wk, 1, "SAME"), kv_tokens)
        v = heads_first(tf.nn.conv2d(reduced, wv, 1, "SAME"), kv_tokens)
        attn = tf.nn.softmax(tf.matmul(q, k, transpose_a=True) / 2.0)  # (1, heads, N, M)
        out = tf.matmul(v, attn, transpose_b=True)  # (1, heads, d, N)
        return tf.transpose(tf.reshape(out, (1, C, *SIZE)), (0, 2, 3, 1))

    module = tf.Module()
    module.f = tf.function(block, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    tf.saved_model.save(module, str(folder / "saved_model"), signatures=module.f)
    return folder / "saved_model"


def _converted(saved_model, calib=None) -> bytes:
    """The TF converter's own file (float32, or full int8 with ``calib``), before any rewrite."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calib is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calib.representative_dataset()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def _count(content: bytes, op_name: str) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return sum(op["op_name"] == op_name for op in Interpreter(model_content=content)._get_ops_details())


@pytest.fixture(scope="module")
def single_head(tmp_path_factory):
    saved_model = _attention_saved_model(tmp_path_factory.mktemp("single_head"), heads=1)
    rng = np.random.default_rng(0)
    return saved_model, calibration_from_array(rng.normal(size=(16, 3, *SIZE)).astype(np.float32), "random")


def test_float32_file_loses_its_transposes_and_computes_the_same(single_head):
    saved_model, calib = single_head
    converted = _converted(saved_model)
    assert _count(converted, "TRANSPOSE") == 4

    rewritten, removed = drop_matmul_transposes(converted)
    assert removed == 4 and _count(rewritten, "TRANSPOSE") == 0
    x = calib.images[:4]
    for xnnpack in (False, True):
        reference = TFLiteRunner(converted, xnnpack=xnnpack)(x)
        drift = np.abs(TFLiteRunner(rewritten, xnnpack=xnnpack)(x) - reference).max()
        assert drift <= 1e-6 * np.ptp(reference), (xnnpack, drift)
    assert drop_matmul_transposes(rewritten) == (rewritten, 0)


def test_full_int8_variant_is_built_without_them_and_xnnpack_runs_it_whole(single_head):
    saved_model, calib = single_head
    converted = _converted(saved_model, calib)
    built = build_tflite(saved_model, "full_int8", calib)
    assert _count(converted, "TRANSPOSE") == 4 and _count(built, "TRANSPOSE") == 0
    assert TFLiteRunner(built).delegation["not_delegated"] == {}  # the int8 SOFTMAX a float island (xnnpack_int8)

    # int8 sums are exact in any order: on the builtin kernels the layout rewrite alone is
    # bit-identical, and the variant computes what the int8 rewrite alone makes of the converter's file
    x = calib.images[:4]
    reference = TFLiteRunner(converted, xnnpack=False)(x)
    assert np.array_equal(TFLiteRunner(drop_matmul_transposes(converted)[0], xnnpack=False)(x), reference)
    int8_forms_only = TFLiteRunner(xnnpack_int8_forms(converted)[0], xnnpack=False)(x)
    assert np.array_equal(TFLiteRunner(built, xnnpack=False)(x), int8_forms_only)


def test_two_heads_are_left_as_they_are(tmp_path):
    converted = _converted(_attention_saved_model(tmp_path, heads=2))
    assert drop_matmul_transposes(converted) == (converted, 0)
