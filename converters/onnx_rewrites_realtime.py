"""ONNX rewrites for what the real-time networks of issue 30 need (onnx2tf 1.29.24, TF 2.19's
TFLite converter, LiteRT 2.3.0); ``onnx_surgery.apply_workarounds`` applies them after its own.
Each is exact (same function in real arithmetic) and has a test in ``tests/test_realtime_*.py``
that fails without it.

- ``float16_safe_epsilons``: a norm's ``Sqrt(ReduceMean(d * d) + eps)`` whose epsilon float16
  cannot hold (LayerNorm eps 1e-12 of DPT and BEiT rounds to 0: a zero token then gives 0/0 and
  every logit of the float16 file is NaN). ``d`` is scaled by 2^13 before squaring and the root
  by 2^-13 after it, and eps by 2^26: the same value, with constants float16 holds (2^13, 2^-13
  and eps x 2^26 >= float16's smallest normal).
- ``sigmoid_complement``: ``1 - Sigmoid(x)`` (PIDNet's boundary fusion) is ``Sigmoid(-x)``; the
  TFLite converter swaps the operands of the SUB when it sits between onnx2tf's layout transposes
  (``SUB(sigmoid, 1)``: float32 argmax agreement 42.8% on PIDNet-S while the SavedModel is right).
- ``split_fused_projections``: ``MatMul(x, W) [+ b] -> Split(axis=-1)`` on (B, N, 3C) tokens
  (onnxsim fuses separate q/k/v linears so) is split by onnx2tf along axis 1; it becomes one
  MatMul (and Add) per output with W's (and b's) column blocks.
- ``pad_value_as_zero_pad``: ``Pad(x, value=c)`` with ``c != 0`` becomes ``Pad(x - c, 0) + c``:
  a PADV2's constant stays float32 in the int16x8 file and LiteRT refuses to load it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seg2tflite.converters.onnx_graph import _constant

FLOAT16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16, 6.1e-5
NORM_SCALE_LOG2 = 13  # d * 2^13: eps x 2^26 is a normal float16 for any eps >= 1e-12


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _users(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for out in graph.output:
        users.setdefault(out.name, []).append(None)
    return users


def _insert_before(graph: onnx.GraphProto, reader_of: str, new: onnx.NodeProto) -> None:
    """Put ``new`` before the first node that reads ``reader_of``."""
    nodes = list(graph.node)
    i = next(j for j, n in enumerate(nodes) if reader_of in n.input)
    del graph.node[:]
    graph.node.extend(nodes[:i] + [new] + nodes[i:])


def _add_constant(graph: onnx.GraphProto, value, name: str, dtype=np.float32) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name


def float16_unsafe(value: float) -> bool:
    """float16 rounds ``value`` to 0 or Inf, or loses more than 10% of it."""
    with np.errstate(over="ignore"):
        half = float(np.float16(value))
    return value != 0 and (half == 0 or not np.isfinite(half) or abs(half - value) > 0.1 * abs(value))


def _square_input(node: onnx.NodeProto | None, graph: onnx.GraphProto) -> str | None:
    """``d`` when ``node`` computes ``d * d`` or ``d ** 2``."""
    if node is None:
        return None
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow":
        exponent = _constant(graph, node.input[1])
        if exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0:
            return node.input[0]
    return None


def float16_safe_epsilons(model: onnx.ModelProto) -> list[str]:
    """``Sqrt(ReduceMean(d*d) + eps)`` with a float16-unsafe ``eps``  =>  ``Sqrt(ReduceMean(d'*d') +
    eps*k^2) / k`` with ``d' = d*k``, ``k = 2^13`` (exact: powers of two)."""
    graph, applied = model.graph, []
    k = float(2**NORM_SCALE_LOG2)
    for out in [node.output[0] for node in graph.node if node.op_type == "Add"]:
        producers, users = _producers(graph), _users(graph)
        add = producers[out]  # looked up afresh: an insert copies every node, earlier references go stale
        for side in (0, 1):
            eps = _constant(graph, add.input[1 - side])
            mean = producers.get(add.input[side])
            if eps is None or eps.size != 1 or not float16_unsafe(float(eps.reshape(-1)[0])):
                continue
            if mean is None or mean.op_type != "ReduceMean" or len(users.get(mean.output[0], [])) != 1:
                continue
            square = producers.get(mean.input[0])
            d = _square_input(square, graph)
            roots = users.get(add.output[0], [])
            if d is None or len(users.get(square.output[0], [])) != 1 or len(roots) != 1 or roots[0] is None:
                continue
            root = roots[0]
            if root.op_type != "Sqrt":
                continue
            n = lambda tag: f"{add.name or add.output[0]}/float16_safe/{tag}"  # noqa: E731
            value = float(eps.reshape(-1)[0])
            _add_constant(graph, k, n("k"))
            _add_constant(graph, 1.0 / k, n("inv_k"))
            _add_constant(graph, value * k * k, n("eps_k2"))
            for i, name in enumerate(square.input):
                if name == d:
                    square.input[i] = n("scaled")
            add.input[1 - side] = n("eps_k2")
            std = root.output[0]
            root.output[0] = n("std_k")  # edited in place first: inserting nodes copies them
            _insert_before(graph, n("scaled"), helper.make_node("Mul", [d, n("k")], [n("scaled")], name=n("Scale")))
            _insert_after(graph, n("std_k"), helper.make_node("Mul", [n("std_k"), n("inv_k")], [std], name=n("Unscale")))
            applied.append(
                f"{add.name}: norm epsilon {value:g} (float16 cannot hold it) kept by scaling the centred values by 2^13, "
                "so the float16 file holds it"
            )
            break
    return applied


def _insert_after(graph: onnx.GraphProto, writer_of: str, new: onnx.NodeProto) -> None:
    """Put ``new`` after the node that writes ``writer_of``."""
    nodes = list(graph.node)
    i = next(j for j, n in enumerate(nodes) if writer_of in n.output)
    del graph.node[:]
    graph.node.extend(nodes[: i + 1] + [new] + nodes[i + 1 :])


def constant_minus_tensor(model: onnx.ModelProto) -> list[str]:
    """``c - Sigmoid(x)`` with ``c == 1``  =>  ``Sigmoid(-x)``; any other ``c - y`` (c constant)  =>
    ``y * -1 + c``: no SUB with a constant first operand reaches the TFLite converter, which swaps
    such a SUB's operands when onnx2tf puts it between a transpose and its inverse (so does a
    ``c - y`` written as NEG and ADD, which the converter folds back into that SUB)."""
    graph, applied = model.graph, []
    for sub in list(graph.node):
        if sub.op_type != "Sub" or _constant(graph, sub.input[1]) is not None:
            continue
        c = _constant(graph, sub.input[0])
        if c is None or c.dtype.kind != "f":
            continue
        producers, users = _producers(graph), _users(graph)
        y, out = sub.input[1], sub.output[0]
        n = lambda tag: f"{sub.name or out}/{tag}"  # noqa: E731
        source = producers.get(y)
        if source is not None and source.op_type == "Sigmoid" and c.size == 1 and float(c.reshape(-1)[0]) == 1.0:
            new = [
                helper.make_node("Neg", [source.input[0]], [n("negated")], name=n("Neg")),
                helper.make_node("Sigmoid", [n("negated")], [out], name=n("Sigmoid")),
            ]
            what = "1 - Sigmoid(x) rewritten as Sigmoid(-x)"
        else:
            _add_constant(graph, -1.0, n("minus_one"), c.dtype)
            new = [
                helper.make_node("Mul", [y, n("minus_one")], [n("negated")], name=n("Negate")),
                helper.make_node("Add", [n("negated"), sub.input[0]], [out], name=n("AddConstant")),
            ]
            what = "constant - y rewritten as y * -1 + constant"
        del users
        nodes = list(graph.node)
        i = next(j for j, node in enumerate(nodes) if out in node.output)
        del graph.node[:]
        graph.node.extend(nodes[:i] + new + nodes[i + 1 :])
        applied.append(f"{sub.name}: {what}, so the TFLite converter cannot swap the SUB's operands")
    return applied


def _split_sizes(graph: onnx.GraphProto, split: onnx.NodeProto, total: int) -> list[int] | None:
    if len(split.input) > 1 and split.input[1]:
        sizes = _constant(graph, split.input[1])
        return None if sizes is None else [int(v) for v in sizes.reshape(-1)]
    for a in split.attribute:
        if a.name == "split":
            return list(a.ints)
    parts = len(split.output)
    return [total // parts] * parts if total % parts == 0 else None


def split_fused_projections(model: onnx.ModelProto) -> list[str]:
    """``MatMul(x, W) [+ b] -> Split(last axis)`` on 3-D tokens, W (and b) constant  =>  one MatMul
    (and Add) per output with W's (and b's) column blocks; nothing is split any more."""
    graph, applied = model.graph, []
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for split in list(graph.node):
        if split.op_type != "Split" or ranks.get(split.input[0]) != 3:
            continue
        axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
        if axis not in (-1, 2):
            continue
        producers, users = _producers(graph), _users(graph)
        chain = [producers.get(split.input[0])]
        bias = None
        if chain[0] is not None and chain[0].op_type == "Add":
            add = chain[0]
            for side in (0, 1):
                b = _constant(graph, add.input[side])
                if b is not None and b.ndim == 1:
                    bias, chain = b, [producers.get(add.input[1 - side]), add]
                    break
        matmul = chain[0]
        if matmul is None or matmul.op_type != "MatMul":
            continue
        weight = _constant(graph, matmul.input[1])
        if weight is None or weight.ndim != 2 or any(len(users.get(node.output[0], [])) != 1 for node in chain):
            continue
        sizes = _split_sizes(graph, split, weight.shape[1])
        if sizes is None or sum(sizes) != weight.shape[1]:
            continue
        new, start = [], 0
        for i, (size, out) in enumerate(zip(sizes, split.output)):
            n = lambda tag: f"{matmul.name}/part{i}/{tag}"  # noqa: E731
            _add_constant(graph, weight[:, start : start + size], n("weight"))
            if bias is None:
                new.append(helper.make_node("MatMul", [matmul.input[0], n("weight")], [out], name=n("MatMul")))
            else:
                _add_constant(graph, bias[start : start + size], n("bias"))
                new.append(helper.make_node("MatMul", [matmul.input[0], n("weight")], [n("product")], name=n("MatMul")))
                new.append(helper.make_node("Add", [n("product"), n("bias")], [out], name=n("Add")))
            start += size
        nodes = list(graph.node)
        i = next(j for j, node in enumerate(nodes) if node.output[0] == matmul.output[0])
        kept = [node for node in nodes if list(node.output) != list(split.output) and all(
            list(node.output) != list(c.output) for c in chain)]  # fmt: skip
        before = [node for node in nodes[:i] if node in kept]
        after = [node for node in nodes[i:] if node in kept]
        del graph.node[:]
        graph.node.extend(before + new + after)
        applied.append(
            f"{split.name or matmul.name}: MatMul{' + Add' if bias is not None else ''} split on the last axis of 3-D tokens rewritten as "
            f"{len(sizes)} MatMuls, which onnx2tf cannot split on the wrong axis"
        )
    return applied


MAX_SHIFTED_PAD = 1024.0  # largest |pad value| shifted to a zero pad: float32 keeps x to 2^-13 of it


def pad_value_as_zero_pad(model: onnx.ModelProto) -> list[str]:
    """``Pad(x, constant c != 0)``  =>  ``Pad(x - c, 0) + c`` (a PAD, not a PADV2 with a float constant),
    for ``|c| <= MAX_SHIFTED_PAD``: ``x - c`` keeps x to float32's rounding at c's magnitude, so a
    larger c (a max pool's padding with float32's lowest value) would erase x and stays a PADV2."""
    graph, applied = model.graph, []
    for name in [node.output[0] for node in graph.node if node.op_type == "Pad"]:
        pad = _producers(graph)[name]  # afresh: an insert copies every node
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        if mode != "constant" or len(pad.input) < 3 or not pad.input[2]:
            continue
        value = _constant(graph, pad.input[2])
        if (
            value is None
            or value.size != 1
            or value.dtype.kind != "f"
            or not 0 < abs(float(value.reshape(-1)[0])) <= MAX_SHIFTED_PAD
        ):
            continue
        n = lambda tag: f"{pad.name or pad.output[0]}/zero_pad/{tag}"  # noqa: E731
        c = float(value.reshape(-1)[0])
        _add_constant(graph, c, n("value"), value.dtype)
        _add_constant(graph, 0.0, n("zero"), value.dtype)
        x, out = pad.input[0], pad.output[0]
        pad.input[0], pad.input[2], pad.output[0] = n("shifted"), n("zero"), n("padded")  # edited before the inserts copy it
        _insert_before(graph, n("shifted"), helper.make_node("Sub", [x, n("value")], [n("shifted")], name=n("Sub")))
        _insert_after(graph, n("padded"), helper.make_node("Add", [n("padded"), n("value")], [out], name=n("Add")))
        applied.append(f"{pad.name}: Pad with value {c:g} rewritten as Pad(x - {c:g}, 0) + {c:g}, so int16x8 quantizes it")
    return applied


def batchnorm_as_depthwise_conv(model: onnx.ModelProto) -> list[str]:
    """A BatchNormalization no conv absorbed, on a 4-D tensor  =>  a depthwise 1x1 Conv with the
    folded scale and shift (``x * scale + shift``): onnx2tf lays out a standalone BatchNormalization
    by guessing, and after residual adds and a global mean (``(1, C, 1, 1)``) it guesses wrong."""
    graph, applied = model.graph, []
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in graph.input})
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or ranks.get(bn.input[0]) != 4:
            continue
        gamma, beta, mean, var = (_constant(graph, name) for name in bn.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
        c = scale.size
        n = lambda tag: f"{bn.name or bn.output[0]}/{tag}"  # noqa: E731
        _add_constant(graph, scale.reshape(c, 1, 1, 1), n("depthwise_weight"))
        _add_constant(graph, shift, n("depthwise_bias"))
        conv = helper.make_node(
            "Conv", [bn.input[0], n("depthwise_weight"), n("depthwise_bias")], [bn.output[0]], name=n("DepthwiseConv"),
            group=c, kernel_shape=[1, 1],
        )  # fmt: skip
        nodes = list(graph.node)
        i = next(j for j, node in enumerate(nodes) if list(node.output) == list(bn.output))
        del graph.node[:]
        graph.node.extend(nodes[:i] + [conv] + nodes[i + 1 :])
        applied.append(
            f"{bn.name}: standalone BatchNormalization rewritten as a depthwise 1x1 Conv, which onnx2tf lays out right"
        )
    return applied


def apply_realtime_rewrites(model: onnx.ModelProto) -> list[str]:
    """Apply every rewrite of this module to ``model`` in place; one line per rewrite applied."""
    applied = batchnorm_as_depthwise_conv(model)
    applied += float16_safe_epsilons(model)
    applied += constant_minus_tensor(model)
    applied += split_fused_projections(model)
    applied += pad_value_as_zero_pad(model)
    return applied
