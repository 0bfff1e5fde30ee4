"""ONNX graph rewrites applied before onnx2tf: for patterns onnx2tf 1.29 converts wrongly, and one
exact simplification that only saves time.

Measured with onnx2tf 1.29.24 (tests/test_convert_surgery.py fails if a rewrite is removed).

``apply_workarounds`` is the driver: it runs every rewrite on a copy of the model, in order, and
lists what each applied (for the manifest). The rewrites live beside it:

- ``onnx_rewrites_norms``: normalisations onnx2tf or int16x8 get wrong (a channel LayerNorm written
  as permute/LayerNorm/permute, LayerNorm over tokens, GroupNorm).
- ``onnx_rewrites_layout``: padding and layout (MaxPool padding that is not SAME, ``stack().sum(0)``)
  and the dead-tap crop of dilated convolutions, an exact simplification.
- ``onnx_rewrites_realtime``: the real-time architectures' patterns (issue 30).

``onnx_graph`` holds the small graph helpers they share.
"""

from __future__ import annotations

import onnx

from seg2tflite.converters.onnx_rewrites_layout import drop_dead_conv_taps, explicit_maxpool_padding, stacked_sum_as_adds
from seg2tflite.converters.onnx_rewrites_norms import fold_channel_layernorm, group_norm_as_means, token_layernorm_as_means
from seg2tflite.converters.onnx_rewrites_realtime import apply_realtime_rewrites


def apply_workarounds(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Return the rewritten model and one line per rewrite applied (for the manifest)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _name_every_node(model.graph)
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


def _name_every_node(graph: onnx.GraphProto) -> None:
    """A unique name for every node (an exporter may leave names empty or repeat them): the
    rewrites name what they add after the node they replace."""
    seen: set[str] = set()
    for node in graph.node:
        if not node.name or node.name in seen:
            node.name = f"{node.output[0]}/{node.op_type}" if node.output else f"{node.op_type}_{len(seen)}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
