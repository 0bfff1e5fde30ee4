"""ONNX graph rewrites applied before onnx2tf: for patterns onnx2tf 1.29 converts wrongly, and one
exact simplification that only saves time.

Measured with onnx2tf 1.29.24 (tests/test_convert_surgery.py fails if a rewrite is removed):

- ``Transpose(0,2,3,1) -> LayerNormalization(axis=-1) -> Transpose(0,3,1,2)``, a channel norm
  written as permute/LayerNorm/permute (SegFormer, ConvNeXt code), converts SILENTLY WRONG
  whenever the channel count equals a spatial size of that tensor: onnx2tf guesses which axis
  is normalised from test data and picks a spatial one. It is rewritten as the same norm over
  axis 1 of the NCHW tensor (ReduceMean/Sub/Mul/Sqrt/Div) with the affine as a depthwise 1x1
  Conv, so onnx2tf has no transpose and no broadcast constant to guess about (a (1,C,1,1)
  Mul/Add constant is itself mis-broadcast when C equals H).

- ``MaxPool`` with padding that is not TensorFlow's SAME padding (ResNet's ``MaxPool2d(3, 2, 1)``
  on an even-sized map) is padded by onnx2tf with float32's lowest value (-3.4e38) before an
  unpadded pool. Full-int8 calibration then sees -3.4e38: the stem's scale becomes ~1.3e36, every
  activation quantizes to 0 and LiteRT aborts the process on load; in int16x8 the pad value stays
  float32 (``PADV2 failed to prepare``). The padding is made an explicit ``Pad`` with a finite
  value that gives the same maximum: 0 after a Relu (the input is >= 0), else the edge value
  (every window that covers a padded cell also covers the edge cell it copies, since pad < kernel).

- ``torch.stack(xs).sum(0)`` (smp FPN's merge) exports as Unsqueeze(0) on each input, a Concat
  along the new axis 0 and a ReduceSum over it: a 5-D tensor whose layout onnx2tf gets wrong.
  It is rewritten as the plain sum of the inputs (a chain of Adds).

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

Not a workaround: ``drop_dead_conv_taps`` crops a Conv's kernel to the rows and columns that read
an input cell for some output pixel; the others read only zero padding, everywhere. DeepLabv3+'s
ASPP (3x3, dilation and padding 6/12/18) on the 6x6 map of a 96x96 input is exactly a 1x1 conv
with the centre weights, which XNNPACK would otherwise compute with all 9 taps (about 9% of
DeepLabv3+ MobileNetV2's int8 time there). Same function, same output shape, less work
(tests/test_dead_conv_taps.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seg2tflite.converters.onnx_rewrites_realtime import apply_realtime_rewrites

CHANNEL_LAST = [0, 2, 3, 1]
CHANNEL_FIRST = [0, 3, 1, 2]


def apply_workarounds(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Return the rewritten model and one line per rewrite applied (for the manifest)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    applied = fold_channel_layernorm(model)
    applied += explicit_maxpool_padding(model)
    applied += stacked_sum_as_adds(model)
    applied += token_layernorm_as_means(model)
    applied += group_norm_as_means(model)
    applied += drop_dead_conv_taps(model)
    applied += apply_realtime_rewrites(model)  # onnx_rewrites_realtime: issue 30's patterns
    if applied:
        _drop_unused_initializers(model.graph)
        model = onnx.shape_inference.infer_shapes(model)
    return model, applied


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = _attr(node, "value", None)
            return None if value is None else numpy_helper.to_array(value)
    return None


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


def _replace(graph: onnx.GraphProto, remove: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
    """Put ``new`` where the first removed node was (its inputs exist there), drop ``remove``."""
    gone = {tuple(r.output) for r in remove}
    out = []
    for node in graph.node:
        if tuple(node.output) in gone:
            out.extend(new)
            new = []
            continue
        out.append(node)
    del graph.node[:]
    graph.node.extend(out)


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many nodes (and graph outputs) read each tensor: a rewrite may only drop a tensor nothing else reads."""
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for out in graph.output:
        users[out.name] = users.get(out.name, 0) + 1
    return users


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


NON_NEGATIVE_OPS = ("Relu",)  # producers whose output is >= 0 (Clip is checked on its min)


def _non_negative(graph: onnx.GraphProto, tensor: str) -> bool:
    producer = next((node for node in graph.node if tensor in node.output), None)
    if producer is None:
        return False
    if producer.op_type in NON_NEGATIVE_OPS:
        return True
    if producer.op_type == "Clip" and len(producer.input) > 1 and producer.input[1]:
        low = _constant(graph, producer.input[1])
        return low is not None and float(np.asarray(low).min()) >= 0.0
    return False


def _same_pads(size: list[int], kernel: list[int], strides: list[int]) -> list[int]:
    """The ONNX-ordered pads TensorFlow's SAME padding gives (what onnx2tf maps to SAME)."""
    begin, end = [], []
    for i, k, s in zip(size, kernel, strides):
        total = max((-(-i // s) - 1) * s + k - i, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def _ceil_extra(size: list[int], kernel: list[int], strides: list[int], pads: list[int]) -> list[int]:
    """Extra end padding ``ceil_mode`` needs: the last window may start inside the input or the
    begin padding, never wholly in the end padding (PyTorch's and ONNX Runtime's rule)."""
    n, extra = len(size), []
    for a, (i, k, s) in enumerate(zip(size, kernel, strides)):
        span = i + pads[a] + pads[a + n]
        out = -(-(span - k) // s) + 1
        if (out - 1) * s >= i + pads[a]:
            out -= 1
        extra.append(max((out - 1) * s + k - span, 0))
    return extra


def explicit_maxpool_padding(model: onnx.ModelProto) -> list[str]:
    """MaxPool with non-SAME pads  =>  Pad (0 after a Relu, else edge) then an unpadded MaxPool."""
    graph, applied = model.graph, []
    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for pool in list(graph.node):
        if pool.op_type != "MaxPool" or len(pool.output) != 1 or _attr(pool, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        shape = shapes.get(pool.input[0])
        kernel = list(_attr(pool, "kernel_shape", []))
        if shape is None or len(shape) != 4 or len(kernel) != 2 or any(d != 1 for d in _attr(pool, "dilations", [1, 1])):
            continue
        strides = list(_attr(pool, "strides", [1, 1]))
        pads = list(_attr(pool, "pads", [0, 0, 0, 0]))
        ceil = bool(_attr(pool, "ceil_mode", 0))
        extra = _ceil_extra(shape[2:], kernel, strides, pads) if ceil else [0, 0]
        pads = pads[:2] + [p + e for p, e in zip(pads[2:], extra)]
        if not any(pads) or (not ceil and pads == _same_pads(shape[2:], kernel, strides)):
            continue  # unpadded, or onnx2tf's SAME pooling, which ignores the padding as a max-pool must
        zero = _non_negative(graph, pool.input[0])
        prefix = f"{pool.name or pool.output[0]}/ExplicitPad"
        pads_name = f"{prefix}/pads"
        graph.initializer.append(
            numpy_helper.from_array(np.asarray([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), pads_name)
        )
        padded = f"{prefix}/output"
        pad = helper.make_node("Pad", [pool.input[0], pads_name], [padded], name=prefix, mode="constant" if zero else "edge")
        for a in list(pool.attribute):
            if a.name in ("pads", "ceil_mode", "auto_pad"):
                pool.attribute.remove(a)
        pool.input[0] = padded
        index = list(graph.node).index(pool)
        graph.node.insert(index, pad)
        fill = "0 (its input follows a Relu)" if zero else "the edge value"
        applied.append(
            f"{pool.name}: MaxPool padding {pads} made an explicit Pad with {fill}, so no -3.4e38 reaches int8 calibration"
        )
    return applied


def _axes(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[int] | None:
    """The axes of an Unsqueeze/Reduce node: its attribute (older opsets) or its constant second input."""
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = _constant(graph, node.input[1])
        axes = None if value is None else np.asarray(value).reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def stacked_sum_as_adds(model: onnx.ModelProto) -> list[str]:
    """Unsqueeze(0) each -> Concat(axis 0) -> ReduceSum(axis 0, keepdims 0)  =>  x0 + x1 + ... ."""
    graph, applied = model.graph, []
    while True:
        users = _use_counts(graph)
        producer = {o: node for node in graph.node for o in node.output}
        match = None
        for reduce in graph.node:
            if reduce.op_type != "ReduceSum" or _axes(graph, reduce) != [0] or _attr(reduce, "keepdims", 1) != 0:
                continue
            concat = producer.get(reduce.input[0])
            if (
                concat is None
                or concat.op_type != "Concat"
                or _attr(concat, "axis", None) != 0
                or users.get(concat.output[0]) != 1
            ):
                continue
            unsqueezes = [producer.get(name) for name in concat.input]
            if len(unsqueezes) < 2 or any(
                u is None or u.op_type != "Unsqueeze" or _axes(graph, u) != [0] or users.get(u.output[0]) != 1 for u in unsqueezes
            ):
                continue
            match = reduce, concat, unsqueezes
            break
        if match is None:
            return applied
        reduce, concat, unsqueezes = match
        terms = [u.input[0] for u in unsqueezes]
        adds, total = [], terms[0]
        for i, term in enumerate(terms[1:], 1):
            out = reduce.output[0] if i == len(terms) - 1 else f"{reduce.name}/Add_{i}/output"
            adds.append(helper.make_node("Add", [total, term], [out], name=f"{reduce.name}/Add_{i}"))
            total = out
        gone = {tuple(n.output) for n in (concat, *unsqueezes)}
        reduce_out = tuple(reduce.output)
        kept = []
        for node in graph.node:
            if tuple(node.output) == reduce_out:
                kept.extend(adds)  # every term exists by now: the Unsqueezes that read them came earlier
            elif tuple(node.output) not in gone:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)
        applied.append(f"{reduce.name}: stack({len(terms)} tensors).sum(0) (a 5-D Concat) rewritten as {len(terms) - 1} Adds")


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


def _conv_out(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    return (size + begin + end - dilation * (kernel - 1) - 1) // stride + 1


def _live_taps(size: int, kernel: int, stride: int, dilation: int, begin: int, out: int) -> tuple[int, int] | None:
    """First and last kernel tap along one axis that reads an input cell (not padding) for some
    output position; None when no tap does or the live taps are not contiguous."""
    live = [i for i in range(kernel) if any(0 <= y * stride - begin + i * dilation < size for y in range(out))]
    if not live or live != list(range(live[0], live[-1] + 1)):
        return None
    return live[0], live[-1]


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def drop_dead_conv_taps(model: onnx.ModelProto) -> list[str]:
    """2-D Conv whose outer kernel rows/columns read only zero padding for every output  =>  the
    same Conv with the live part of the kernel, the padding and dilation adjusted (exact)."""
    graph, applied = model.graph, []
    shapes = _static_shapes(model)
    weights = {init.name: init for init in graph.initializer}
    for conv in graph.node:
        if conv.op_type != "Conv" or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        shape, weight = shapes.get(conv.input[0]), weights.get(conv.input[1])
        if shape is None or len(shape) != 4 or weight is None or len(weight.dims) != 4:
            continue
        kernel, size = list(weight.dims[2:]), shape[2:]
        strides = list(_attr(conv, "strides", [1, 1]))
        dilations = list(_attr(conv, "dilations", [1, 1]))
        pads = list(_attr(conv, "pads", [0, 0, 0, 0]))
        outs = [_conv_out(size[a], kernel[a], strides[a], dilations[a], pads[a], pads[a + 2]) for a in (0, 1)]
        live = [_live_taps(size[a], kernel[a], strides[a], dilations[a], pads[a], outs[a]) for a in (0, 1)]
        if None in live:
            continue
        (i0, i1), (j0, j1) = live
        new_kernel = [i1 - i0 + 1, j1 - j0 + 1]
        if new_kernel == kernel:
            continue
        new_pads = [
            pads[0] - i0 * dilations[0],
            pads[1] - j0 * dilations[1],
            pads[2] - (kernel[0] - 1 - i1) * dilations[0],
            pads[3] - (kernel[1] - 1 - j1) * dilations[1],
        ]
        if min(new_pads) < 0:
            continue
        new_dilations = [d if k > 1 else 1 for d, k in zip(dilations, new_kernel)]
        new_outs = [_conv_out(size[a], new_kernel[a], strides[a], new_dilations[a], new_pads[a], new_pads[a + 2]) for a in (0, 1)]
        assert new_outs == outs, (conv.name, new_outs, outs)  # the padding lost is what the dropped taps spanned
        name = f"{conv.name or conv.output[0]}/live_taps_weight"
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, i0 : i1 + 1, j0 : j1 + 1], name))
        conv.input[1] = name
        _set_attr(conv, "pads", new_pads)
        _set_attr(conv, "dilations", new_dilations)
        if _attr(conv, "kernel_shape", None) is not None:
            _set_attr(conv, "kernel_shape", new_kernel)
        applied.append(
            f"{conv.name}: {kernel[0]}x{kernel[1]} Conv (dilation {dilations}) on a {size[0]}x{size[1]} map cropped to "
            f"{new_kernel[0]}x{new_kernel[1]}, the taps left out read only zero padding (same output, less work)"
        )
    return applied


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every value's shape where shape inference knows all of it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if dims and all(d for d in dims):
            shapes[value.name] = dims
    return shapes
