"""Full int8's activation ranges: calibrate, record each tensor's distribution, choose its range,
quantize (``int8_build`` puts these together into the full-int8 file).

The TF converter's full-int8 file takes each activation's range from its min/max over the
calibration images, so one outlier pixel costs a whole tensor its resolution. Here the converter
only calibrates (``_experimental_calibrate_only``: a float .tflite whose tensors carry min/max);
the calibrated file is then run in LiteRT on the same images, every calibrated tensor's values
are binned into a histogram, a range is chosen per tensor (``int8_range_rules``: the methods and
their rules), written back into the calibrated file's min/max, and ``mlir_quantize`` (the
quantizer ``convert()`` itself calls) builds the int8 file from them. With ``minmax`` the file is
the converter's own.

Tensors the int8 spec ties to one scale (a concatenation's inputs and output, pooling, resize,
reshape and the other data-movement ops) get one range, chosen on their histograms together;
the fixed-scale outputs (LOGISTIC, SOFTMAX, TANH, LOG_SOFTMAX) are left to the quantizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from seg2tflite.converters.int8_range_rules import Histogram, choose_range, merged
from seg2tflite.quiet import muted_stderr

RANGES_FILE = "int8_ranges.json"  # beside model_full_int8.tflite in a conversion folder: its ``int8_build.Int8Build.record``
HELD_OUT_EVERY = 4  # auto: every 4th calibration image scores the methods, the rest sets their ranges
SAME_SCALE_OPS = frozenset({
    "CONCATENATION", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "PAD",
    "PADV2", "MIRROR_PAD", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GATHER", "GATHER_ND", "TILE", "BROADCAST_TO",
    "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "MAXIMUM", "MINIMUM", "REVERSE_V2",
})  # fmt: skip
FIXED_SCALE_OPS = frozenset({"LOGISTIC", "SOFTMAX", "TANH", "LOG_SOFTMAX"})

Representative = Callable[[], Iterable[list[np.ndarray]]]


def calibrate(saved_model, representative: Representative, per_channel: bool = True) -> bytes:
    """The SavedModel as a float .tflite whose tensors carry the converter's calibration min/max."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_disable_per_channel = not per_channel
    converter._experimental_calibrate_only = True
    with muted_stderr():  # the converter logs through absl, line by line
        return converter.convert()


def quantize(
    calibrated: bytes,
    int8_io: str = "float",
    per_channel: bool = True,
    float_ops: Iterable[str] = (),
    float_nodes: Iterable[str] = (),
) -> bytes:
    """The int8 file ``mlir_quantize`` builds from ``calibrated``'s ranges (int8 or float ends;
    ``float_ops`` types and ``float_nodes`` output tensors stay float), buffers de-duplicated as
    ``convert()`` does."""
    import tensorflow as tf
    from tensorflow.lite.python import convert
    from tensorflow.lite.python.lite import _deduplicate_readonly_buffers

    io_type = tf.int8 if int8_io == "int8" else tf.float32
    with muted_stderr():
        quantized = convert.mlir_quantize(
            calibrated,
            disable_per_channel=not per_channel,
            input_data_type=io_type,
            output_data_type=io_type,
            denylisted_ops=list(float_ops) or None,
            denylisted_nodes=list(float_nodes) or None,
        )
    return bytes(_deduplicate_readonly_buffers(quantized))


@dataclass
class RangeStatistics:
    """Every calibrated tensor's histogram over the images that set ranges (``fit``) and, for
    ``auto``, over the held-out ones; the float model's outputs on the held-out images; every
    tensor's per-channel (last axis) mean over all images, by name (for bias correction)."""

    fit: dict[int, Histogram]
    held_out: dict[int, Histogram]
    held_out_inputs: list[np.ndarray]
    held_out_outputs: list[np.ndarray]
    channel_means: dict[bytes, np.ndarray] = field(default_factory=dict)

    def all_images(self) -> dict[int, Histogram]:
        return {t: merged([h, self.held_out[t]]) if t in self.held_out else h for t, h in self.fit.items()}


def calibrated_ranges(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Tensor index -> the (min, max) the calibrator recorded."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    graph = TFLiteGraph.read(calibrated)
    ranges = {}
    for i, tensor in enumerate(graph.graph.tensors):
        q = tensor.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1 and not graph.is_constant(i):
            ranges[i] = (float(q.min[0]), float(q.max[0]))
    return ranges


def argmax_inputs(calibrated: bytes) -> dict[int, int]:
    """Tensor -> class axis, for every tensor that only ARG_MAX reads (not a graph output)."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    graph = TFLiteGraph.read(calibrated)
    readers: dict[int, set[str]] = {}
    axes = {}
    for op in graph.graph.operators:
        for t in op.inputs:
            readers.setdefault(int(t), set()).add(graph.name(op))
        axis = graph.constant(int(op.inputs[1])) if graph.name(op) == "ARG_MAX" else None
        if axis is not None:
            axes[int(op.inputs[0])] = int(np.asarray(axis).ravel()[0])
    outputs = {int(t) for t in graph.graph.outputs}
    return {t: axis for t, axis in axes.items() if readers[t] == {"ARG_MAX"} and t not in outputs}


def every_tensor_interpreter(content: bytes):
    """LiteRT on ``content`` with its builtin kernels and every intermediate tensor kept, to read."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with muted_stderr():
        interpreter = Interpreter(
            model_content=content,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.allocate_tensors()
    return interpreter


def collect_statistics(calibrated: bytes, representative: Representative, hold_out: bool) -> RangeStatistics:
    """Run the calibrated float file on every representative input (LiteRT's builtin kernels, every
    tensor kept) and bin each calibrated tensor's values on the calibrator's min/max."""
    ranges = calibrated_ranges(calibrated)
    decisive = argmax_inputs(calibrated)
    interpreter = every_tensor_interpreter(calibrated)
    inputs = interpreter.get_input_details()
    (output,) = interpreter.get_output_details()
    logits = output["index"] if len(output["shape"]) == 4 and output["shape"][-1] > 1 else None  # NHWC class logits
    stats = RangeStatistics({t: Histogram(*r) for t, r in ranges.items()}, {}, [], [])
    names = {t["index"]: t["name"].encode() for t in interpreter.get_tensor_details()}
    sums: dict[int, np.ndarray] = {}
    n = -1
    for n, sample in enumerate(representative()):
        for detail, x in zip(inputs, sample):
            interpreter.set_tensor(detail["index"], np.asarray(x, detail["dtype"]))
        interpreter.invoke()
        held = hold_out and n % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        target = stats.held_out if held else stats.fit
        for t, (lo, hi) in ranges.items():
            values = interpreter.get_tensor(t)
            target.setdefault(t, Histogram(lo, hi)).add(values)
            if t in decisive:
                target[t].add_decisive(values, decisive[t])
            if t == logits and np.issubdtype(values.dtype, np.floating):
                target[t].add_logits(values)
            if values.ndim:
                sums[t] = sums.get(t, 0) + values.reshape(-1, values.shape[-1]).mean(axis=0, dtype=np.float64)
        if held:
            stats.held_out_inputs.append([np.asarray(x) for x in sample])
            stats.held_out_outputs.append(interpreter.get_tensor(output["index"]).copy())
    stats.channel_means = {names[t]: total / (n + 1) for t, total in sums.items()}
    return stats


def tied_groups(calibrated: bytes, tensors: Iterable[int]) -> list[list[int]]:
    """The calibrated tensors the int8 spec gives one scale, as groups (every tensor in one group;
    fixed-scale outputs in none)."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    graph = TFLiteGraph.read(calibrated)
    tensors = set(tensors)
    parent = {t: t for t in tensors}

    def root(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    fixed = set()
    for op in graph.graph.operators:
        name = graph.name(op)
        if name in FIXED_SCALE_OPS:
            fixed.update(int(t) for t in op.outputs)
        if name not in SAME_SCALE_OPS:
            continue
        members = [int(t) for t in [*op.inputs, *op.outputs] if int(t) in tensors]
        for t in members[1:]:
            parent[root(t)] = root(members[0])
    groups: dict[int, list[int]] = {}
    for t in sorted(tensors - fixed):
        groups.setdefault(root(t), []).append(t)
    return list(groups.values())


def choose_ranges(groups: list[list[int]], histograms: dict[int, Histogram], method: str) -> dict[int, tuple[float, float]]:
    ranges = {}
    for group in groups:
        chosen = choose_range(merged([histograms[t] for t in group]), method)
        ranges.update((t, chosen) for t in group)
    return ranges


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """``calibrated`` with the given tensors' calibration min/max replaced."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    graph = TFLiteGraph.read(calibrated)
    for t, (lo, hi) in ranges.items():
        q = graph.graph.tensors[t].quantization
        q.min, q.max = np.array([lo], np.float32), np.array([hi], np.float32)
    return graph.write()
