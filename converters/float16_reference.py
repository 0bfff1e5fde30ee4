"""The float16 model a float16 .tflite computes, as an ONNX model ONNX Runtime runs: the float16
gate's reference (issue 30).

The TFLite converter stores a float16 file's weights folded (a BatchNorm's four parameters become
one scale and one shift, merged into the conv before it) and then rounded to float16; on a CPU it
computes in float32. Rounding each BatchNorm parameter separately is another model, one that
differs from the file by more than the float32 gate allows on float16-sensitive networks. So the
reference folds first, as the converter does, then rounds: ``model.onnx`` (onnxsim has already
merged every Conv -> BatchNormalization), each BatchNormalization left standing folded into one
scale and shift (``onnx_rewrites_realtime.batchnorm_as_depthwise_conv``), every float32 constant
rounded to float16 and back.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from seg2tflite.converters.onnx_rewrites_realtime import batchnorm_as_depthwise_conv


def rounded_to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float32 initializer and Constant rounded to float16 and back."""
    model = onnx.ModelProto.FromString(model.SerializeToString())

    def rounded(tensor: onnx.TensorProto) -> onnx.TensorProto:
        array = numpy_helper.to_array(tensor)
        if array.dtype != np.float32:
            return tensor
        with np.errstate(over="ignore"):
            return numpy_helper.from_array(array.astype(np.float16).astype(np.float32), tensor.name)

    for tensor in model.graph.initializer:
        tensor.CopyFrom(rounded(tensor))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                attribute.t.CopyFrom(rounded(attribute.t))
    return model


def float16_model(model: onnx.ModelProto) -> bytes:
    """``model`` folded as the TFLite converter folds it, then rounded to float16; serialized."""
    folded = onnx.ModelProto.FromString(model.SerializeToString())
    batchnorm_as_depthwise_conv(folded)
    return rounded_to_float16(folded).SerializeToString()


def float16_model_of_runner(onnx_runner) -> bytes | None:
    """``float16_model`` of the ONNX model an ``OnnxRunner`` runs (None when it cannot be read back)."""
    session = getattr(onnx_runner, "session", None)
    source = getattr(session, "_model_path", None) or getattr(session, "_model_bytes", None)
    if source is None:
        return None
    model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    return float16_model(model)
