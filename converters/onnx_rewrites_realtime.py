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


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


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
    for add in list(graph.node):
        if add.op_type != "Add":
            continue
        producers, users = _producers(graph), _users(graph)
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


def apply_realtime_rewrites(model: onnx.ModelProto) -> list[str]:
    """Apply every rewrite of this module to ``model`` in place; one line per rewrite applied."""
    applied = float16_safe_epsilons(model)
    applied += constant_minus_tensor(model)
    return applied
