"""Small ONNX graph helpers the rewrites of ``onnx_surgery`` share: an attribute, a constant's
value, the opset, how often each value is read, replacing nodes in place, static shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNEL_LAST = [0, 2, 3, 1]
CHANNEL_FIRST = [0, 3, 1, 2]


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


def _axes(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[int] | None:
    """The axes of an Unsqueeze/Reduce node: its attribute (older opsets) or its constant second input."""
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = _constant(graph, node.input[1])
        axes = None if value is None else np.asarray(value).reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every value's shape where shape inference knows all of it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if dims and all(d for d in dims):
            shapes[value.name] = dims
    return shapes
