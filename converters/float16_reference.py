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

from seg2tflite.converters.onnx_graph import _use_counts
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
    fold_affine_into_conv(folded)
    return rounded_to_float16(folded).SerializeToString()


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant that broadcasts over (1, C, H, W) per channel (a scalar or (1, C, 1, 1)), as (C,)."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if value.size == channels and value.ndim in (3, 4) and value.shape[-3] == channels:
        return value.reshape(channels).astype(np.float64)
    return None


def fold_affine_into_conv(model: onnx.ModelProto) -> int:
    """What the TFLite converter merges into a Conv before rounding its weights: a following
    ``Mul`` or ``Add`` by a per-channel constant, and a HardSigmoid's ``alpha * x + beta`` (its
    clip to [0, 1] stays, as RELU_0_TO_1). Returns how many were folded."""
    graph, folded = model.graph, 0
    changed = True
    while changed:
        changed = False
        producers = {out: node for node in graph.node for out in node.output}
        users = _use_counts(graph)
        for node in graph.node:
            conv = producers.get(node.input[0]) if node.input else None
            if conv is None or conv.op_type != "Conv" or users.get(conv.output[0], 0) != 1:
                continue
            weight = _constant(graph, conv.input[1])
            if weight is None:
                continue
            channels = weight.shape[0]
            bias = _constant(graph, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(channels)
            if bias is None:
                continue
            scale, shift = None, None
            if node.op_type in ("Mul", "Add") and len(node.input) == 2:
                c = _constant(graph, node.input[1])
                c = None if c is None else _per_channel(c, channels)
                if c is not None:
                    scale, shift = (c, np.zeros(channels)) if node.op_type == "Mul" else (np.ones(channels), c)
            elif node.op_type == "HardSigmoid":
                attrs = {a.name: a.f for a in node.attribute}
                scale = np.full(channels, attrs.get("alpha", 0.2))
                shift = np.full(channels, attrs.get("beta", 0.5))
            if scale is None:
                continue
            w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
            b = bias.astype(np.float64) * scale + shift
            name = conv.output[0]
            tag = f"{conv.name or name}/folded{folded}"
            graph.initializer.extend(
                [numpy_helper.from_array(w.astype(np.float32), f"{tag}/weight"),
                 numpy_helper.from_array(b.astype(np.float32), f"{tag}/bias")]
            )  # fmt: skip
            conv.input[1] = f"{tag}/weight"
            if len(conv.input) > 2:
                conv.input[2] = f"{tag}/bias"
            else:
                conv.input.append(f"{tag}/bias")
            if node.op_type == "HardSigmoid":  # the clip stays
                node.op_type = "Clip"
                del node.attribute[:]
                graph.initializer.extend(
                    [numpy_helper.from_array(np.asarray(0.0, np.float32), f"{tag}/lo"),
                     numpy_helper.from_array(np.asarray(1.0, np.float32), f"{tag}/hi")]
                )  # fmt: skip
                node.input[:] = [name, f"{tag}/lo", f"{tag}/hi"]
            else:  # the Mul/Add is gone: its readers read the conv
                gone = node.output[0]
                for reader in graph.node:
                    reader.input[:] = [name if i == gone else i for i in reader.input]
                for out in graph.output:
                    if out.name == gone:
                        conv.output[0] = gone
                        for reader in graph.node:
                            reader.input[:] = [gone if i == name else i for i in reader.input]
                graph.node.remove(node)
            folded += 1
            changed = True
            break
    return folded


def float16_model_of_runner(onnx_runner) -> bytes | None:
    """``float16_model`` of the ONNX model an ``OnnxRunner`` runs (None when it cannot be read back)."""
    session = getattr(onnx_runner, "session", None)
    source = getattr(session, "_model_path", None) or getattr(session, "_model_bytes", None)
    if source is None:
        return None
    model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    return float16_model(model)
