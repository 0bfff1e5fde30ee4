"""The layout transposes onnx2tf writes around attention matmuls, removed from the converted file.

onnx2tf computes in NHWC but keeps an NCHW model's reshapes exact, so a token attention written
in NCHW (``x.flatten(2)``, a (B, C, H*W) matmul operand, and the (B, C, H*W) result reshaped back
to (B, C, H, W)) becomes TRANSPOSE-to-NCHW, RESHAPE, BATCH_MATMUL, RESHAPE, TRANSPOSE-to-NHWC:
SegFormer-B0 has 32 such TRANSPOSEs (40 in full int8), a tenth of its int8 time at 96x96.
Both are the same bytes read in another order, so:

- an operand ``reshape(transpose(x, (0, 3, 1, 2)), (.., C, H*W))`` of an NHWC ``x`` is the
  matrix transpose of ``reshape(x, (.., H*W, C))``: the TRANSPOSE goes and the matmul's adjoint
  flag for that operand flips;
- a result ``transpose(reshape(A @ B, (1, C, H, W)), (0, 2, 3, 1))`` is
  ``reshape((A @ B)^T, (1, H, W, C))``, and ``(A @ B)^T = B^T @ A^T``: the operands swap, both
  adjoint flags flip, and the TRANSPOSE goes.

Values are only moved, never computed, so every precision gets the same file modulo layout
(float32 bit-identical here: XNNPACK's matmul sums in the same order either way is not assumed;
the conversion's parity gates run on the rewritten file). Run before ``xnnpack_int8``: after the
swap SegFormer's SOFTMAX output is the left operand, where XNNPACK takes any zero point.
"""

from __future__ import annotations

import numpy as np

from seg2tflite.converters.tflite_graph import TFLiteGraph

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def drop_matmul_transposes(content: bytes) -> tuple[bytes, int]:
    """``content`` without the layout TRANSPOSEs around its BATCH_MATMULs, and how many went."""
    g = TFLiteGraph.read(content)
    if g is None:
        return content, 0
    removed = 0
    for op in [op for op in g.graph.operators if g.name(op) == "BATCH_MATMUL"]:
        removed += _result_channels_last(g, op)
        removed += sum(_operand_from_channels_last(g, op, position) for position in (0, 1))
    return (g.write(), removed) if removed else (content, 0)


def _only_reader(g: TFLiteGraph, t: int, name: str):
    readers = g.readers.get(t, [])
    if t in g.ends or len(readers) != 1 or g.name(readers[0]) != name:
        return None
    return readers[0]


def _reshape_to(g: TFLiteGraph, reshape, source: int, output: int, shape: list[int]) -> None:
    reshape.inputs = np.array([source, g.add_int32_constant(shape, b"matmul_layout/shape")], np.int32)
    reshape.outputs = np.array([output], np.int32)
    if reshape.builtinOptions is not None and getattr(reshape.builtinOptions, "newShape", None) is not None:
        reshape.builtinOptions.newShape = np.array(shape, np.int32)
    g.graph.tensors[output].shape = np.array(shape, np.int32)
    g.graph.tensors[output].shapeSignature = None


def _permutation(g: TFLiteGraph, op) -> list[int] | None:
    perm = g.constant(int(op.inputs[1]))
    return None if perm is None else perm.tolist()


def _result_channels_last(g: TFLiteGraph, op) -> int:
    """BMM -> RESHAPE (1, C, H, W) -> TRANSPOSE to NHWC  =>  swapped BMM -> RESHAPE (1, H, W, C)."""
    product = int(op.outputs[0])
    rows, cols = g.shape(product)[-2:]
    reshape = _only_reader(g, product, "RESHAPE")
    if reshape is None or any(d != 1 for d in g.shape(product)[:-2]):
        return 0
    nchw = int(reshape.outputs[0])
    transpose = _only_reader(g, nchw, "TRANSPOSE")
    shape = g.shape(nchw)
    if transpose is None or len(shape) != 4 or shape[:2] != [1, rows] or shape[2] * shape[3] != cols:
        return 0
    if _permutation(g, transpose) != TO_NHWC:
        return 0
    options = op.builtinOptions
    options.adjX, options.adjY = not options.adjY, not options.adjX
    op.inputs = np.array([op.inputs[1], op.inputs[0]], np.int32)
    g.graph.tensors[product].shape = np.array([*g.shape(product)[:-2], cols, rows], np.int32)
    g.graph.tensors[product].shapeSignature = None
    _reshape_to(g, reshape, product, int(transpose.outputs[0]), [1, shape[2], shape[3], rows])
    g.graph.operators.remove(transpose)
    g.reindex()
    return 1


def _operand_from_channels_last(g: TFLiteGraph, op, position: int) -> int:
    """NHWC x -> TRANSPOSE to NCHW -> RESHAPE (.., C, H*W) -> BMM  =>  RESHAPE (.., H*W, C) -> BMM^T."""
    operand = int(op.inputs[position])
    reshape = g.producer.get(operand)
    if reshape is None or g.name(reshape) != "RESHAPE" or _only_reader(g, operand, "BATCH_MATMUL") is not op:
        return 0
    nchw = int(reshape.inputs[0])
    transpose = g.producer.get(nchw)
    if transpose is None or g.name(transpose) != "TRANSPOSE" or _only_reader(g, nchw, "RESHAPE") is not reshape:
        return 0
    shape, target = g.shape(nchw), g.shape(operand)
    if _permutation(g, transpose) != TO_NCHW or len(shape) != 4 or any(d != 1 for d in target[:-2]):
        return 0
    if shape[0] != 1 or target[-2:] != [shape[1], shape[2] * shape[3]]:
        return 0
    _reshape_to(g, reshape, int(transpose.inputs[0]), operand, [*target[:-2], target[-1], target[-2]])
    options = op.builtinOptions
    if position == 0:
        options.adjX = not options.adjX
    else:
        options.adjY = not options.adjY
    g.graph.operators.remove(transpose)
    g.reindex()
    return 1
