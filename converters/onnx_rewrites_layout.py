"""ONNX rewrites of padding and layout (applied by ``onnx_surgery.apply_workarounds``; measured
with onnx2tf 1.29.24), and one exact simplification:

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

from seg2tflite.converters.onnx_graph import (
    _attr,
    _axes,
    _constant,
    _set_attr,
    _static_shapes,
    _use_counts,
)

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


def _conv_out(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    return (size + begin + end - dilation * (kernel - 1) - 1) // stride + 1


def _live_taps(size: int, kernel: int, stride: int, dilation: int, begin: int, out: int) -> tuple[int, int] | None:
    """First and last kernel tap along one axis that reads an input cell (not padding) for some
    output position; None when no tap does or the live taps are not contiguous."""
    live = [i for i in range(kernel) if any(0 <= y * stride - begin + i * dilation < size for y in range(out))]
    if not live or live != list(range(live[0], live[-1] + 1)):
        return None
    return live[0], live[-1]


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
