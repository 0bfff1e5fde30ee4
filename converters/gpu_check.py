"""Which ops of a .tflite the mobile GPU delegate would refuse, by TensorFlow's own TFLite Analyzer.

``tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)`` runs the GPU delegate's
compatibility rules (``tflite::CheckGpuDelegateCompatibility``, the ones the delegate applies on
the phone) on every operator, and prints each refusal as ``GPU COMPATIBILITY WARNING: <why>``
under the op's line. ``gpu_compatibility`` parses that text into the ops refused (by name, with
the first reason) and whether the whole graph would run on the GPU. It is a static check: an
op it passes may still fail on a particular GPU at run time (the Analyzer says so too).

The check is only as good as the Analyzer's build: the TensorFlow 2.19 wheel's Analyzer applies
no GPU rules at all (it calls LOCAL_RESPONSE_NORMALIZATION, REDUCE_ANY and a uint8 -> float32
CAST compatible, all three refused by ``CheckGpuDelegateCompatibility``; onnx2tf's ``-cgdc``
calls the same Analyzer). So ``analyzer_checks_gpu`` first runs it on a probe graph the GPU
delegate refuses (one LOCAL_RESPONSE_NORMALIZATION: not an op the GPU delegate has); when the
probe passes, every file's report says ``checked: false`` with that reason instead of a
"compatible" that means nothing.

What is said then is ``outside_gpu_rules``: the ops of the file that ``CheckGpuDelegateCompatibility``
has no case for (its switch, tensorflow/lite/tools/versioning/gpu_compatibility.cc at
tensorflow commit 03a5e4e, read by name into ``GPU_RULE_OPS``), plus the one per-op condition
this project's files meet: a CAST from uint8 (``--input uint8``), which it refuses. The op
conditions of the other cases (strides, broadcast shapes, activations) are not applied: an
op listed there is refused for sure, one not listed may still be.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re

_OP = re.compile(r"^\s*Op#(\d+) ([A-Z0-9_]+)\(")
_WARNING = "GPU COMPATIBILITY WARNING: "


def analyzer_text(model: bytes) -> str:
    """The Analyzer's report of ``model`` with the GPU compatibility check."""
    import tensorflow as tf

    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the Analyzer prints its report from Python
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(model), gpu_compatibility=True)
    return out.getvalue()


def parse_gpu_compatibility(text: str) -> dict:
    """``{"compatible", "ops", "refused": {op: count}, "reasons": {op: first reason}}`` from the report."""
    ops = 0
    refused: dict[str, int] = {}
    reasons: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = _OP.match(line)
        if match:
            ops += 1
            current = match.group(2)
        elif line.startswith(_WARNING) and current is not None:
            refused[current] = refused.get(current, 0) + 1
            reasons.setdefault(current, line[len(_WARNING) :].strip())
            current = None  # one warning per op; the subgraph summary that follows is not an op's
        elif not line.strip():
            current = None
    return {
        "compatible": "looks compatible with GPU delegate" in text and not refused,
        "ops": ops,
        "refused": dict(sorted(refused.items(), key=lambda kv: (-kv[1], kv[0]))),
        "reasons": reasons,
    }


@functools.cache
def analyzer_checks_gpu() -> bool:
    """Whether this TensorFlow's Analyzer refuses a graph the GPU delegate cannot run."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)])
    def probe(x):
        return tf.nn.local_response_normalization(x)

    from seg2tflite.quiet import muted_stderr

    converter = tf.lite.TFLiteConverter.from_concrete_functions([probe.get_concrete_function()], probe)
    with muted_stderr():  # the converter's absl lines (grappler, "Ignored output_format", ...) are not the user's
        content = converter.convert()
    return not parse_gpu_compatibility(analyzer_text(content))["compatible"]


UNCHECKED = (
    "not checked: this TensorFlow's TFLite Analyzer applies no GPU rules "
    "(it passes LOCAL_RESPONSE_NORMALIZATION, which the GPU delegate refuses)"
)


GPU_RULE_OPS = frozenset(
    """ADD ADD_N AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D CUMSUM DENSIFY DEPTHWISE_CONV_2D
    DEPTH_TO_SPACE DEQUANTIZE EMBEDDING_LOOKUP DYNAMIC_UPDATE_SLICE FULLY_CONNECTED GATHER HARD_SWISH LSTM
    MAX_POOL_2D MEAN MUL PACK ONE_HOT QUANTIZE RELU_N1_TO_1 PRELU RESHAPE SELECT SELECT_V2 SLICE SOFTMAX
    SPACE_TO_DEPTH SPLIT SPLIT_V STRIDED_SLICE TILE TRANSPOSE TRANSPOSE_CONV RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR RELU RELU6 LEAKY_RELU REDUCE_MAX REDUCE_MIN REDUCE_PROD SUM PAD PADV2 MIRROR_PAD
    ABS CEIL COS ELU EXP FLOOR GELU LOG LOGISTIC NEG RSQRT SIGN SIN SQRT SQUARE TANH ATAN2 DIV EQUAL
    FLOOR_DIV FLOOR_MOD GREATER GREATER_EQUAL LOGICAL_AND LESS LESS_EQUAL MAXIMUM MINIMUM NOT_EQUAL POW
    SQUARED_DIFFERENCE SUB STABLEHLO_CLAMP CUSTOM""".split()
)  # the cases of CheckGpuDelegateCompatibility's switch (see the module docstring)
_GPU_CAST_INPUTS = ("float32", "float16", "int32", "bool", "bool_")  # the CAST case's input types


def outside_gpu_rules(model: bytes) -> dict[str, int]:
    """``{op: count}``: the ops of ``model`` the GPU delegate's rules refuse by name (CAST: by its input type)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=bytes(model), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    refused: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        bad_cast = name == "CAST" and dtypes[int(op["inputs"][0])].__name__ not in _GPU_CAST_INPUTS
        if name not in GPU_RULE_OPS or bad_cast:
            refused[name] = refused.get(name, 0) + 1
    return dict(sorted(refused.items(), key=lambda kv: (-kv[1], kv[0])))


def gpu_compatibility(model: bytes) -> dict:
    """The Analyzer's GPU verdict on ``model``, with ``checked`` saying whether it means anything;
    unchecked, ``outside_gpu_rules`` says which ops the rules' switch refuses by name."""
    report = parse_gpu_compatibility(analyzer_text(model))
    if analyzer_checks_gpu():
        return {"checked": True, **report}
    return {"checked": False, **report, "compatible": None, "note": UNCHECKED, "outside_gpu_rules": outside_gpu_rules(model)}


def gpu_line(name: str, report: dict) -> str:
    """One line for the conversion log."""
    if not report.get("checked", True):
        outside = ", ".join(f"{n} {op}" for op, n in report.get("outside_gpu_rules", {}).items())
        return (
            f"{name}: the GPU delegate's rules refuse {outside or 'no op by name'} (read by op name: this Analyzer applies none)"
        )
    if report["compatible"]:
        return f"{name}: the GPU delegate's checks pass all {report['ops']} ops"
    refused = ", ".join(f"{n} {op} ({report['reasons'][op]})" for op, n in report["refused"].items())
    return f"{name}: the GPU delegate would refuse {sum(report['refused'].values())} of {report['ops']} ops: {refused}"
