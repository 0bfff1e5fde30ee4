"""ONNX rewrites of normalisations onnx2tf converts wrongly or int16x8 cannot run (applied by
``onnx_surgery.apply_workarounds``; measured with onnx2tf 1.29.24):

- ``Transpose(0,2,3,1) -> LayerNormalization(axis=-1) -> Transpose(0,3,1,2)``, a channel norm
  written as permute/LayerNorm/permute (SegFormer, ConvNeXt code), converts SILENTLY WRONG
  whenever the channel count equals a spatial size of that tensor: onnx2tf guesses which axis
  is normalised from test data and picks a spatial one. It is rewritten as the same norm over
  axis 1 of the NCHW tensor (ReduceMean/Sub/Mul/Sqrt/Div) with the affine as a depthwise 1x1
  Conv, so onnx2tf has no transpose and no broadcast constant to guess about (a (1,C,1,1)
  Mul/Add constant is itself mis-broadcast when C equals H).

- ``LayerNormalization`` over the last axis (token norms, (B, N, C)) becomes, through onnx2tf and
  the TFLite converter, ops int16x8 cannot take: LiteRT has no int16 SQUARED_DIFFERENCE, and a
  zero bias gets quantization scale 0, which aborts the process on load. It is rewritten as
  ReduceMean, ``centred * centred``, ReduceMean, ``Reciprocal(Sqrt(var + eps))``, and the affine as
  a Mul and an Add (each left out when it is the identity: weight all ones, bias all zeros).
  Means as a MatMul with a (C, 1) column of 1/C (this project's SegFormer computes them as 1x1
  convolutions) do not work here: the TFLite converter folds ``+ eps`` into the MatMul's bias
  and merges every norm's equal constants into one tensor with one scale, so int16x8 refuses to
  load (kernel_util.cc ``scale_diff / output_scale <= 0.02``) and full int8 crashes XNNPACK on
  load (``double free``, smp and HF SegFormer).

- ``GroupNorm`` (smp FPN's decoder) exports as Reshape to (N, G, L), ``InstanceNormalization``,
  Reshape back; onnx2tf computes that with SQUARED_DIFFERENCE, which int16x8 cannot run. It is
  rewritten with the same ReduceMeans as the token LayerNorm.

LayerNormalization over tokens (B, N, C) also crashes onnx2tf, but only on an unsimplified graph
(shapes computed by Shape/Gather/Concat stay unknown); ``onnx_export.simplify`` folds them first.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seg2tflite.converters.onnx_graph import (
    CHANNEL_FIRST,
    CHANNEL_LAST,
    _attr,
    _constant,
    _opset,
    _replace,
    _static_shapes,
    _use_counts,
)


def _channel_norm_nodes(
    opset: int, x: str, y: str, epsilon: float, scale: np.ndarray, bias: np.ndarray | None, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(x - mean_c) / sqrt(var_c + eps) * scale + bias over axis 1 of an NCHW tensor.

    Node names start with the LayerNorm node's name, so a divergence report still points at the
    PyTorch module that produced them.
    """
    n = lambda s: f"{prefix}/{s}"  # noqa: E731
    c = scale.size
    inits = [numpy_helper.from_array(np.asarray(epsilon, np.float32), n("eps"))]

    def reduce_mean(inp: str, out: str, tag: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [inp, n("axes")], [out], name=n(tag), keepdims=1)
        return helper.make_node("ReduceMean", [inp], [out], name=n(tag), axes=[1], keepdims=1)

    if opset >= 18:
        inits.append(numpy_helper.from_array(np.asarray([1], np.int64), n("axes")))
    inits.append(numpy_helper.from_array(scale.astype(np.float32).reshape(c, 1, 1, 1), n("affine_weight")))
    conv_inputs = [n("normed"), n("affine_weight")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32).reshape(c), n("affine_bias")))
        conv_inputs.append(n("affine_bias"))
    nodes = [
        reduce_mean(x, n("mean"), "ReduceMean"),
        helper.make_node("Sub", [x, n("mean")], [n("centered")], name=n("Sub")),
        helper.make_node("Mul", [n("centered"), n("centered")], [n("sq")], name=n("Square")),
        reduce_mean(n("sq"), n("var"), "ReduceMeanVar"),
        helper.make_node("Add", [n("var"), n("eps")], [n("var_eps")], name=n("AddEps")),
        helper.make_node("Sqrt", [n("var_eps")], [n("std")], name=n("Sqrt")),
        helper.make_node("Div", [n("centered"), n("std")], [n("normed")], name=n("Div")),
        helper.make_node("Conv", conv_inputs, [y], name=n("Affine"), group=c, kernel_shape=[1, 1]),
    ]
    return nodes, inits


def fold_channel_layernorm(model: onnx.ModelProto) -> list[str]:
    """Transpose->LayerNorm(last axis)->Transpose back  =>  a norm over axis 1, no transposes."""
    graph, opset, applied = model.graph, _opset(model), []
    while True:
        users = _use_counts(graph)
        producer = {o: node for node in graph.node for o in node.output}
        consumer = {i: node for node in graph.node for i in node.input}
        match = None
        for ln in graph.node:
            if ln.op_type != "LayerNormalization" or _attr(ln, "axis", -1) not in (-1, 3) or len(ln.input) < 2:
                continue
            pre, post = producer.get(ln.input[0]), consumer.get(ln.output[0])
            if (
                pre is None
                or post is None
                or pre.op_type != "Transpose"
                or post.op_type != "Transpose"
                or list(_attr(pre, "perm", [])) != CHANNEL_LAST
                or list(_attr(post, "perm", [])) != CHANNEL_FIRST
                or users.get(pre.output[0]) != 1
                or users.get(ln.output[0]) != 1
            ):
                continue
            scale = _constant(graph, ln.input[1])
            has_bias = len(ln.input) > 2 and bool(ln.input[2])
            bias = _constant(graph, ln.input[2]) if has_bias else None
            if scale is None or (has_bias and bias is None):
                continue
            match = (pre, ln, post, scale, bias)
            break
        if match is None:
            return applied
        pre, ln, post, scale, bias = match
        nodes, inits = _channel_norm_nodes(
            opset, pre.input[0], post.output[0], float(_attr(ln, "epsilon", 1e-5)), scale, bias, ln.name
        )
        _replace(graph, [pre, ln, post], nodes)
        graph.initializer.extend(inits)
        applied.append(f"{ln.name}: permute->LayerNorm->permute rewritten as a channel norm over axis 1")


def _reduce_mean_last(opset: int, x: str, y: str, name: str) -> onnx.NodeProto:
    if opset >= 18:
        return helper.make_node("ReduceMean", [x, f"{name}/axes"], [y], name=name, keepdims=1)
    return helper.make_node("ReduceMean", [x], [y], name=name, axes=[-1], keepdims=1)


def _last_axis_norm(model: onnx.ModelProto, node: onnx.NodeProto, affine: list) -> list[onnx.NodeProto]:
    """Nodes computing ``node``'s normalisation over the last axis: ReduceMean, ``centred * centred``,
    ReduceMean, ``Reciprocal(Sqrt(var + eps))``, then the ``affine`` ops ``(op, value, tag)`` that
    are not the identity; names keep ``node``'s module path."""
    graph, opset = model.graph, _opset(model)
    n = lambda tag: f"{node.name}/{tag}"  # noqa: E731 - names keep the module path for the divergence report
    graph.initializer.append(numpy_helper.from_array(np.asarray(float(_attr(node, "epsilon", 1e-5)), np.float32), n("eps")))
    if opset >= 18:
        graph.initializer.extend(
            numpy_helper.from_array(np.asarray([-1], np.int64), n(f"{tag}/axes")) for tag in ("Mean", "Variance")
        )
    x, y = node.input[0], node.output[0]
    nodes = [
        _reduce_mean_last(opset, x, n("mean"), n("Mean")),
        helper.make_node("Sub", [x, n("mean")], [n("centred")], name=n("Sub")),
        helper.make_node("Mul", [n("centred"), n("centred")], [n("square")], name=n("Square")),
        _reduce_mean_last(opset, n("square"), n("var"), n("Variance")),
        helper.make_node("Add", [n("var"), n("eps")], [n("var_eps")], name=n("AddEps")),
        helper.make_node("Sqrt", [n("var_eps")], [n("std")], name=n("Sqrt")),
        helper.make_node("Reciprocal", [n("std")], [n("inv_std")], name=n("Reciprocal")),
    ]
    current = n("normed")
    outputs = [n(f"{tag}_out") for _, _, tag in affine[:-1]] + [y] if affine else []
    nodes.append(helper.make_node("Mul", [n("centred"), n("inv_std")], [current if affine else y], name=n("Normalize")))
    for (op, value, tag), out in zip(affine, outputs):
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n(tag)))
        nodes.append(helper.make_node(op, [current, n(tag)], [out], name=n(f"Affine{op}")))
        current = out
    return nodes


def _non_identity(scale: np.ndarray, bias: np.ndarray | None) -> list:
    affine = [("Mul", scale, "weight", 1.0)] + ([("Add", bias, "bias", 0.0)] if bias is not None else [])
    return [(op, value, tag) for op, value, tag, identity in affine if not np.all(value == identity)]


def token_layernorm_as_means(model: onnx.ModelProto) -> list[str]:
    """LayerNormalization(axis=-1) with constant affine  =>  ReduceMeans, Mul, Reciprocal(Sqrt), Mul, Add."""
    graph, applied = model.graph, []
    for ln in list(graph.node):
        if ln.op_type != "LayerNormalization" or _attr(ln, "axis", -1) != -1 or len(ln.output) != 1:
            continue
        scale = _constant(graph, ln.input[1])
        has_bias = len(ln.input) > 2 and bool(ln.input[2])
        bias = _constant(graph, ln.input[2]) if has_bias else None
        if scale is None or scale.ndim != 1 or (has_bias and bias is None):
            continue
        affine = _non_identity(scale, bias)
        _replace(graph, [ln], _last_axis_norm(model, ln, affine))
        kept = ", ".join(tag for _, _, tag in affine) or "no affine"
        applied.append(f"{ln.name}: token LayerNorm rewritten with ReduceMeans and {kept}, so int16x8 can run it")
    return applied


def group_norm_as_means(model: onnx.ModelProto) -> list[str]:
    """InstanceNormalization of a (N, G, L) tensor (how PyTorch exports GroupNorm: Reshape, this,
    Reshape back, then the affine)  =>  the same ReduceMean norm over L, per-group affine as (G, 1)."""
    graph, applied = model.graph, []
    shapes = _static_shapes(model)
    for norm in list(graph.node):
        if norm.op_type != "InstanceNormalization":
            continue
        shape = shapes.get(norm.input[0])
        scale, bias = _constant(graph, norm.input[1]), _constant(graph, norm.input[2])
        if shape is None or len(shape) != 3 or scale is None or bias is None or shape[-1] < 2:
            continue
        affine = [(op, value.reshape(-1, 1), tag) for op, value, tag in _non_identity(scale, bias)]
        _replace(graph, [norm], _last_axis_norm(model, norm, affine))
        applied.append(f"{norm.name}: GroupNorm's InstanceNormalization rewritten with ReduceMeans, so int16x8 can run it")
    return applied
