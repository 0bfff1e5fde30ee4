"""int8 ops in the forms XNNPACK delegates, rewritten in the converted file.

The TF converter writes int8 ops XNNPACK (LiteRT 2.3.0) leaves to the builtin kernels, which cuts
the graph into partitions. ``xnnpack_int8_forms`` rewrites them into equivalent forms it takes:

**BATCH_MATMUL with a right-hand zero point of 0.** The converter quantizes every activation
asymmetrically, so both sides of an attention matmul (SegFormer's ``q @ k^T`` and ``attn @ v``)
get non-zero zero points; XNNPACK's int8 batch matmul takes the right-hand side only with zero
point 0 (LiteRT 2.0.2-2.1.2 delegated the others and ignored that zero point: the SegFormer
full-int8 collapse). So:

- the right-hand tensor's range [lo, hi] becomes the symmetric [-m, m], m = max(-lo, hi), with
  zero point 0, on that tensor and on every tensor tied to it through ops that pass int8 values
  through unchanged (RESHAPE, TRANSPOSE, SQUEEZE, EXPAND_DIMS). That is possible where the chain
  starts at an op that writes any output scale (a convolution, an add, ...) and every reader of
  those tensors reads its scale (kernels take their input's scale and zero point from the tensor
  at prepare time, nothing is baked in), at a cost of at most one bit of that tensor's
  resolution;
- where the right-hand side cannot change (SegFormer's ``attn @ v`` is written ``v' @ attn^T``,
  its right-hand side a SOFTMAX output, whose int8 range is fixed at [0, 1) with zero point
  -128), the operands are swapped, ``C = A' @ B'`` computed as ``transpose(B'^T @ A'^T)`` (the
  matmul's adjoint flags carry the inner transposes, one TRANSPOSE op the outer), and the new
  right-hand side is made symmetric as above.

A matmul neither way allows is left as it was.

**ADD and SUB inputs at most 1024 times finer than the output.** XNNPACK takes an int8 ADD/SUB
only when each input's scale is at least 1/1024 of the output's. A LayerNorm's token mean is
near zero, so its calibrated range is tiny (SegFormer-B0: scales down to 1e-4 of the centred
output's), and five of its mean subtractions fell to the builtin kernels. Such an input's scale
is widened to 1/1000 of the output's (its zero point scaled with it, so the range still covers
the old one), on the tensors tied to it as above: the values lose resolution only below a
thousandth of an output step.

**Standalone activations as an ADD of 0 with the activation fused.** XNNPACK takes no int8
RELU, RELU6 or RELU_N1_TO_1 op (Xception-65's 19 pre-activation RELUs, after residual adds whose
output the skip branch also reads, so the converter cannot fuse them), but it takes an int8 ADD
with a fused RELU, RELU6 or RELU_N1_TO_1: ``relu(x) = relu(x + 0)`` with the same output tensor,
bit-identical on the builtin kernels. RELU_0_TO_1 (a hard sigmoid's clamp) becomes an ADD with a
fused RELU where its output's int8 range ends at or below 1, so that saturation is the upper clamp.

**Float islands.** XNNPACK has no int8 kernel for HARD_SWISH, GELU, SOFTMAX, AVERAGE_POOL_2D,
RSQRT, ABS, SQUARED_DIFFERENCE, MINIMUM, MAXIMUM, EXP and LOG (``FLOAT_ISLANDS``) but takes each
in float32; the builtin int8 kernels are slow (MobileNetV3's int8 HARD_SWISH, 20 ops, was 61% of
torchvision's LR-ASPP) and every one cuts the delegated graph. Each such op reads its int8 inputs
through a DEQUANTIZE, computes in float32 and writes its own int8 output tensor through a
QUANTIZE, so every tensor between ops stays int8 with its calibrated range: what the int8 kernel
computes (they evaluate the float function on the dequantized input too, through a table or
fixed point), to within the last rounding. ``ops.op_report`` lists these ops as float islands,
apart from ops that keep float tensors. Measured (LiteRT 2.3.0, XNNPACK, 2 threads, files timed
in turns): SegFormer-B0's full int8 at 512x512 from 1.19x to 0.59x its float32 time (46 islands:
30 RSQRT, 8 GELU, 8 SOFTMAX; one delegated partition instead of 47), torchvision's LR-ASPP
MobileNetV3 at 128x128 from 2.1x to 0.48x, the MediaTek UNet (4 AVERAGE_POOL_2D) from 0.46x to
0.40x.

The conversion's parity gates run on the rewritten file.
"""

from __future__ import annotations

import copy

import numpy as np

from seg2tflite.converters.tflite_graph import TFLiteGraph, schema

# Ops whose int8 output is their input's bytes rearranged: input and output share scale and zero point.
PASS_THROUGH = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS"}
# Ops that requantize into whatever output scale their output tensor carries, or read any input scale.
WRITES_ANY_SCALE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL", "QUANTIZE"}
# XNNPACK refuses an int8 ADD/SUB whose input scale is below 1/1024 of its output's; such an
# input is widened to 1/1000, clear of the float32 rounding of that comparison.
ADDEND_SCALE_LIMIT = 1000.0
READS_ANY_SCALE = WRITES_ANY_SCALE | {"DEQUANTIZE", "SOFTMAX", "LOGISTIC", "TANH", "GELU", "MEAN", "SUM", "RSQRT"}
REPORT_KEYS = ("matmuls", "symmetric", "swapped", "left", "activations_as_add", "widened", "float_islands")
# standalone int8 activations XNNPACK refuses -> the activation an int8 ADD of 0 takes fused
ACTIVATIONS_AS_ADD = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1", "RELU_0_TO_1": "RELU"}
# int8 ops XNNPACK (LiteRT 2.3.0) leaves to the builtin kernels but takes in float32 (each checked
# in tests/test_xnnpack_int8.py): computed in float32 between a DEQUANTIZE and a QUANTIZE.
FLOAT_ISLANDS = {
    "HARD_SWISH",
    "GELU",
    "SOFTMAX",
    "AVERAGE_POOL_2D",
    "RSQRT",
    "ABS",
    "SQUARED_DIFFERENCE",
    "MINIMUM",
    "MAXIMUM",
    "EXP",
    "LOG",
}


class _Int8Graph(TFLiteGraph):
    """The graph with the int8 range edits."""

    def tied(self, start: int) -> set[int] | None:
        """The tensors that share ``start``'s scale through pass-through ops, or None when one of
        them cannot take another scale (a constant, a graph input/output, a fixed-range producer,
        a reader that needs its input's scale)."""
        params, found, stack = self.params(start), set(), [start]
        while stack:
            t = stack.pop()
            if t in found:
                continue
            if self.params(t) != params or t in self.ends or self.is_constant(t):
                return None
            found.add(t)
            producer = self.producer.get(t)
            if producer is None:
                return None
            if self.name(producer) in PASS_THROUGH:
                stack.append(int(producer.inputs[0]))
            elif self.name(producer) not in WRITES_ANY_SCALE:
                return None
            for reader in self.readers.get(t, []):
                if self.name(reader) in PASS_THROUGH and int(reader.inputs[0]) == t:
                    stack.append(int(reader.outputs[0]))
                elif self.name(reader) not in READS_ANY_SCALE:
                    return None
        return found

    def make_symmetric(self, tensors: set[int]) -> None:
        scale, zero_point = self.params(next(iter(tensors)))
        symmetric = max(scale * (128 + zero_point), scale * (127 - zero_point)) / 127
        for t in tensors:
            q = self.graph.tensors[t].quantization
            q.scale = np.array([symmetric], np.float32)
            q.zeroPoint = np.array([0], np.int64)

    def widen(self, tensors: set[int], scale: float) -> None:
        old_scale, zero_point = self.params(next(iter(tensors)))
        widened = int(np.clip(round(zero_point * old_scale / scale), -128, 127))
        for t in tensors:
            q = self.graph.tensors[t].quantization
            q.scale = np.array([scale], np.float32)
            q.zeroPoint = np.array([widened], np.int64)

    def float_twin(self, t: int) -> int:
        """A new float32 activation tensor of ``t``'s shape and name; its index."""
        twin = copy.deepcopy(self.graph.tensors[t])
        twin.type, twin.quantization, twin.buffer = schema.TensorType.FLOAT32, None, 0
        twin.name = (twin.name or b"") + b"/float"
        self.graph.tensors.append(twin)
        return len(self.graph.tensors) - 1

    def swap_operands(self, op) -> None:
        """``C = op(A) @ op(B)`` -> ``C^T = BMM(B, A)`` with flipped adjoints, then one TRANSPOSE."""
        graph = self.graph
        options = op.builtinOptions
        options.adjX, options.adjY = not options.adjY, not options.adjX
        op.inputs = np.array([op.inputs[1], op.inputs[0]], np.int32)
        out = int(op.outputs[0])
        transposed = copy.deepcopy(graph.tensors[out])
        rank = len(transposed.shape)
        perm = np.arange(rank, dtype=np.int32)
        perm[-2], perm[-1] = rank - 1, rank - 2
        transposed.shape = np.asarray(transposed.shape)[perm].astype(np.int32)
        transposed.shapeSignature = None
        transposed.name = (graph.tensors[out].name or b"") + b"/transposed"
        perm_tensor = self.add_int32_constant(perm, transposed.name + b"/perm")
        graph.tensors.append(transposed)
        op.outputs = np.array([len(graph.tensors) - 1], np.int32)
        transpose = self.operator(self.opcode(schema.BuiltinOperator.TRANSPOSE), [len(graph.tensors) - 1, perm_tensor], [out])
        transpose.builtinOptionsType, transpose.builtinOptions = (
            schema.BuiltinOptions.TransposeOptions,
            schema.TransposeOptionsT(),
        )
        graph.operators.insert(graph.operators.index(op) + 1, transpose)
        self.reindex()


def xnnpack_int8_forms(content: bytes) -> tuple[bytes, dict]:
    """``content`` with every int8 BATCH_MATMUL's right-hand zero point 0 where the graph allows
    it, every standalone int8 activation an ADD of 0 with it fused, every ADD/SUB input XNNPACK
    finds too fine widened, every int8 op of ``FLOAT_ISLANDS`` computed in float32 between a
    DEQUANTIZE and a QUANTIZE, and a count: ``{"matmuls", "symmetric", "swapped", "left",
    "activations_as_add", "widened", "float_islands"}`` (matmuls already symmetric count as
    symmetric)."""
    g = _Int8Graph.read(content)
    if g is None:
        return content, dict.fromkeys(REPORT_KEYS, 0)
    report = _symmetric_matmuls(g)
    report["activations_as_add"] = _activations_as_add(g)
    report["widened"] = _widen_fine_addends(g)
    report["float_islands"] = _float_islands(g)  # last: the range edits above see the converter's graph
    unchanged = report.pop("unchanged") == report["symmetric"] + report["swapped"]
    if unchanged and not (report["activations_as_add"] or report["widened"] or report["float_islands"]):
        return content, report
    return g.write(), report


def _activations_as_add(g: _Int8Graph) -> int:
    fused = {name: getattr(schema.ActivationFunctionType, activation) for name, activation in ACTIVATIONS_AS_ADD.items()}
    activations = []
    for op in g.graph.operators:
        name, out = g.name(op), int(op.outputs[0])
        if name not in fused or not g.is_int8(int(op.inputs[0])) or g.params(out) is None:
            continue
        scale, zero_point = g.params(out)
        if name == "RELU_0_TO_1" and scale * (127 - zero_point) > 1 + 1e-6:
            continue  # the output's range reaches past 1: saturation would not clamp there
        activations.append(op)
    if not activations:
        return 0
    add = g.opcode(schema.BuiltinOperator.ADD, version=2)  # int8 ADD is version 2
    zero = schema.BufferT()
    zero.data = np.zeros(1, np.uint8)
    g.model.buffers.append(zero)
    for op in activations:
        # the zero at the output's scale: XNNPACK takes an int8 ADD only with each input's scale
        # within [1/1024, 256) of the output's
        constant = schema.TensorT()
        constant.shape, constant.type, constant.buffer, constant.name = (
            np.array([1], np.int32),
            schema.TensorType.INT8,
            len(g.model.buffers) - 1,
            b"activation_as_add/zero",
        )
        constant.quantization = schema.QuantizationParametersT()
        constant.quantization.scale = np.array([g.params(int(op.outputs[0]))[0]], np.float32)
        constant.quantization.zeroPoint = np.array([0], np.int64)
        g.graph.tensors.append(constant)
        activation = fused[g.name(op)]
        op.opcodeIndex = add
        op.inputs = np.array([int(op.inputs[0]), len(g.graph.tensors) - 1], np.int32)
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
        op.builtinOptions.fusedActivationFunction = activation
    g.reindex()
    return len(activations)


def _float_islands(g: _Int8Graph) -> int:
    islands = [op for op in g.graph.operators if g.name(op) in FLOAT_ISLANDS and _island_ready(g, op)]
    if not islands:
        return 0
    dequantize = g.opcode(schema.BuiltinOperator.DEQUANTIZE, version=2)  # int8 -> float32 is version 2
    quantize = g.opcode(schema.BuiltinOperator.QUANTIZE, version=2)  # float32 -> int8 is version 2
    dequantized: dict[int, int] = {}  # int8 tensor -> its float32 twin, one DEQUANTIZE each
    for op in islands:
        before, inputs = [], []
        for t in (int(t) for t in op.inputs):
            if t < 0 or not g.is_int8(t):
                inputs.append(t)
            else:
                if t not in dequantized:
                    dequantized[t] = g.float_twin(t)
                    before.append(g.operator(dequantize, [t], [dequantized[t]]))
                inputs.append(dequantized[t])
        out = int(op.outputs[0])
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array([g.float_twin(out)], np.int32)
        at = g.graph.operators.index(op)
        g.graph.operators[at : at + 1] = [*before, op, g.operator(quantize, [int(op.outputs[0])], [out])]
    g.reindex()
    return len(islands)


def _island_ready(g: _Int8Graph, op) -> bool:
    """Every input int8 with one scale (or not int8 at all: a shape, an axis) and one int8 output."""
    if len(op.outputs) != 1 or not g.is_int8(int(op.outputs[0])) or g.params(int(op.outputs[0])) is None:
        return False
    int8_inputs = [int(t) for t in op.inputs if t >= 0 and g.is_int8(int(t))]
    return bool(int8_inputs) and all(g.params(t) is not None for t in int8_inputs)


def _widen_fine_addends(g: _Int8Graph) -> int:
    widened = 0
    for op in g.graph.operators:
        if g.name(op) not in ("ADD", "SUB") or g.params(int(op.outputs[0])) is None:
            continue
        output_scale = g.params(int(op.outputs[0]))[0]
        for t in (int(t) for t in op.inputs):
            if not g.is_int8(t) or g.params(t) is None or g.params(t)[0] * 1024 >= output_scale:
                continue
            tied = g.tied(t)
            if tied is not None:
                g.widen(tied, output_scale / ADDEND_SCALE_LIMIT)
                widened += 1
    return widened


def _symmetric_matmuls(g: _Int8Graph) -> dict:
    report = {"matmuls": 0, "symmetric": 0, "swapped": 0, "left": 0, "unchanged": 0}
    for op in list(g.graph.operators):
        if g.name(op) != "BATCH_MATMUL":
            continue
        left, right = int(op.inputs[0]), int(op.inputs[1])
        if not (g.is_int8(left) and g.is_int8(right)) or g.params(right) is None or g.params(left) is None:
            continue
        report["matmuls"] += 1
        if g.params(right)[1] == 0:
            report["symmetric"] += 1
            report["unchanged"] += 1
            continue
        tied = g.tied(right)
        if tied is not None:
            g.make_symmetric(tied)
            report["symmetric"] += 1
            continue
        tied = set() if g.params(left)[1] == 0 else g.tied(left)
        if tied is None:
            report["left"] += 1
            continue
        if tied:
            g.make_symmetric(tied)
        g.swap_operands(op)
        report["swapped"] += 1
    return report
