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

    converter = tf.lite.TFLiteConverter.from_concrete_functions([probe.get_concrete_function()], probe)
    return not parse_gpu_compatibility(analyzer_text(converter.convert()))["compatible"]


UNCHECKED = (
    "not checked: this TensorFlow's TFLite Analyzer applies no GPU rules "
    "(it passes LOCAL_RESPONSE_NORMALIZATION, which the GPU delegate refuses)"
)


def gpu_compatibility(model: bytes) -> dict:
    """The Analyzer's GPU verdict on ``model``, with ``checked`` saying whether it means anything."""
    report = parse_gpu_compatibility(analyzer_text(model))
    checked = analyzer_checks_gpu()
    return {"checked": checked, **report, **({} if checked else {"compatible": None, "note": UNCHECKED})}


def gpu_line(name: str, report: dict) -> str:
    """One line for the conversion log."""
    if not report.get("checked", True):
        return f"{name}: GPU delegate compatibility {report['note']}"
    if report["compatible"]:
        return f"{name}: the GPU delegate's checks pass all {report['ops']} ops"
    refused = ", ".join(f"{n} {op} ({report['reasons'][op]})" for op, n in report["refused"].items())
    return f"{name}: the GPU delegate would refuse {sum(report['refused'].values())} of {report['ops']} ops: {refused}"
