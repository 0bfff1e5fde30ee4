"""Full int8's activation ranges: calibrate, record each tensor's distribution, choose its range,
quantize (``int8_build`` puts these together into the full-int8 file).

The TF converter's full-int8 file takes each activation's range from its min/max over the
calibration images, so one outlier pixel costs a whole tensor its resolution. Here the converter
only calibrates (``_experimental_calibrate_only``: a float .tflite whose tensors carry min/max);
the calibrated file is then run in LiteRT on the same images, every calibrated tensor's values
are binned into a histogram, a range is chosen per tensor, written back into the calibrated
file's min/max, and ``mlir_quantize`` (the quantizer ``convert()`` itself calls) builds the int8
file from them. With ``minmax`` the file is the converter's own.

Methods (``RANGE_METHODS``):
- ``minmax``: the observed min/max (the converter's choice);
- ``percentile``: the 0.01st and 99.99th percentiles (AIMET's setting for DeepLabV3+ Xception);
- ``mse``: the range whose expected int8 error (rounding inside, clipping outside) over the
  histogram is smallest, as PT2E's HistogramObserver and AIMET's TF-Enhanced search;
- ``auto``: every method's file built from three quarters of the images and scored on the
  remaining quarter (argmax disagreement with the float model, then relative logit error); the
  best method's ranges are then taken from all images.

Tensors the int8 spec ties to one scale (a concatenation's inputs and output, pooling, resize,
reshape and the other data-movement ops) get one range, chosen on their histograms together;
the fixed-scale outputs (LOGISTIC, SOFTMAX, TANH, LOG_SOFTMAX) are left to the quantizer.

A tensor read only by ARG_MAX (the logits of a file that returns the class map) matters only
through its argmax, and int8 logits that round to one level tie (ARG_MAX then takes the lower
class). Its range (``percentile``, ``mse``) is narrowed to what decides the argmax: from just
below the smallest winning value of a position to just above the largest runner-up, over the
calibration images: clipping values outside it changes no position's argmax there.

A graph output that holds class logits (NHWC, more than one class) is read through its softmax
and argmax, not value by value: its range (``percentile``, ``mse``) is the one whose int8 grid
changes the softmax least (mean KL divergence from the float softmax over positions sampled from
the calibration images). Losers far below a position's winner may clip at no cost; near-equal
top logits get the finer grid that keeps them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from seg2tflite.quiet import muted_stderr

RANGE_METHODS = ("minmax", "percentile", "mse", "auto")
RULES_REVISION = 2  # raised when a rule changes the range a method chooses: full-int8 files built before are rebuilt
RANGES_FILE = "int8_ranges.json"  # beside model_full_int8.tflite in a conversion folder: its ``int8_build.Int8Build.record``
CANDIDATES = ("minmax", "percentile", "mse")  # what ``auto`` chooses from
PERCENTILE = 99.99
BINS = 2048
HELD_OUT_EVERY = 4  # auto: every 4th calibration image scores the methods, the rest sets their ranges
LOGIT_ROWS_PER_IMAGE = 1024  # class-logit outputs: positions kept per image for the softmax divergence
LOGIT_ROWS = 32768  # and at most this many searched
SAME_SCALE_OPS = frozenset({
    "CONCATENATION", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "PAD",
    "PADV2", "MIRROR_PAD", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GATHER", "GATHER_ND", "TILE", "BROADCAST_TO",
    "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "MAXIMUM", "MINIMUM", "REVERSE_V2",
})  # fmt: skip
FIXED_SCALE_OPS = frozenset({"LOGISTIC", "SOFTMAX", "TANH", "LOG_SOFTMAX"})

Representative = Callable[[], Iterable[list[np.ndarray]]]


@dataclass
class Histogram:
    """One tensor's values over the calibration images: counts on fixed edges, exact extremes, zeros
    counted apart (int8 represents zero exactly, so they cost no rounding error)."""

    lo: float
    hi: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    seen_min: float = np.inf
    seen_max: float = -np.inf
    zeros: int = 0
    top1_min: float = np.inf  # read only by ARG_MAX: the smallest value that wins its position
    top2_max: float = -np.inf  # and the largest runner-up
    logit_rows: list[np.ndarray] = field(default_factory=list)  # a class-logit output: sampled positions' logits

    def add(self, values: np.ndarray) -> None:
        values = values.ravel()
        if not values.size:
            return
        self.seen_min = min(self.seen_min, float(values.min()))
        self.seen_max = max(self.seen_max, float(values.max()))
        self.zeros += int(np.count_nonzero(values == 0))
        width = (self.hi - self.lo) / BINS
        index = np.zeros(values.size, np.int64) if width <= 0 else ((values - self.lo) / width).astype(np.int64)
        self.counts += np.bincount(np.clip(index, 0, BINS - 1), minlength=BINS)

    def add_decisive(self, values: np.ndarray, axis: int) -> None:
        """Track the winners and runners-up of ``values`` along the class ``axis``."""
        if values.shape[axis] < 2:
            return
        top = np.partition(values, -2, axis=axis)  # the runner-up at -2, the winner after it
        self.top1_min = min(self.top1_min, float(np.take(top, -1, axis=axis).min()))
        self.top2_max = max(self.top2_max, float(np.take(top, -2, axis=axis).max()))

    def add_logits(self, values: np.ndarray) -> None:
        """Keep up to ``LOGIT_ROWS_PER_IMAGE`` positions (evenly spaced) of class logits, classes last."""
        rows = values.reshape(-1, values.shape[-1])
        keep = np.linspace(0, len(rows) - 1, min(len(rows), LOGIT_ROWS_PER_IMAGE)).astype(np.int64)
        self.logit_rows.append(rows[keep].astype(np.float32))

    @property
    def decisive(self) -> bool:
        return bool(np.isfinite(self.top1_min) and np.isfinite(self.top2_max))

    @property
    def centres(self) -> np.ndarray:
        return self.lo + (np.arange(BINS) + 0.5) * (self.hi - self.lo) / BINS


def merged(histograms: list[Histogram]) -> Histogram:
    """One histogram of several tensors' values (counts moved to common edges by their bin centres)."""
    seen = [h for h in histograms if h.seen_min <= h.seen_max]
    if len(seen) <= 1:
        return seen[0] if seen else histograms[0]
    out = Histogram(min(h.lo for h in seen), max(h.hi for h in seen))
    for h in seen:
        width = (out.hi - out.lo) / BINS
        index = np.zeros(BINS, np.int64) if width <= 0 else ((h.centres - out.lo) / width).astype(np.int64)
        out.counts += np.bincount(np.clip(index, 0, BINS - 1), weights=h.counts, minlength=BINS).astype(np.int64)
        out.seen_min, out.seen_max = min(out.seen_min, h.seen_min), max(out.seen_max, h.seen_max)
        out.top1_min, out.top2_max = min(out.top1_min, h.top1_min), max(out.top2_max, h.top2_max)
        out.zeros += h.zeros
        out.logit_rows += h.logit_rows
    return out


def choose_range(histogram: Histogram, method: str) -> tuple[float, float]:
    """The (min, max) ``method`` gives this tensor; always holds zero, as the int8 grid does."""
    lo, hi = histogram.seen_min, histogram.seen_max
    if not lo <= hi:
        return 0.0, 0.0
    if method in ("percentile", "mse") and histogram.logit_rows:
        lo, hi = _least_divergence_range(np.concatenate(histogram.logit_rows), lo, hi)
    elif method == "percentile" and histogram.counts.sum():
        lo, hi = _percentile(histogram, 100 - PERCENTILE), _percentile(histogram, PERCENTILE)
    elif method == "mse" and histogram.counts.sum():
        lo, hi = _least_error_range(histogram)
    elif method != "minmax" and method not in RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}; choose from {RANGE_METHODS}")
    if method != "minmax" and histogram.decisive:  # one level of margin, so a clipped winner still wins
        low, high = sorted((histogram.top1_min, histogram.top2_max))
        margin = (high - low) / 254
        lo, hi = max(lo, low - margin), min(hi, high + margin)
    lo, hi = max(lo, histogram.seen_min), min(hi, histogram.seen_max)
    return min(lo, 0.0), max(hi, 0.0)


def _percentile(histogram: Histogram, q: float) -> float:
    cumulative = np.cumsum(histogram.counts) / histogram.counts.sum()
    edges = np.linspace(histogram.lo, histogram.hi, BINS + 1)
    i = int(np.searchsorted(cumulative, q / 100))
    return float(edges[min(i + 1, BINS)] if q > 50 else edges[i])


def _least_error_range(histogram: Histogram, candidates: int = 128) -> tuple[float, float]:
    """The (min, max) minimising the expected squared int8 error over the histogram: step^2/12 per
    value inside (exact zeros excepted), the squared distance to the bound per clipped value."""
    c = histogram.counts.astype(np.float64)
    x = histogram.centres
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(c * x**p)]) for p in (0, 1, 2))
    total = s0[-1]
    lo, hi = min(histogram.seen_min, 0.0), max(histogram.seen_max, 0.0)
    # Candidate bounds: from the extremes inwards to the 90% quantile of each side, on the bin edges.
    edges = np.linspace(histogram.lo, histogram.hi, BINS + 1)
    cumulative = s0[1:] / max(total, 1)
    upper_from = int(np.searchsorted(cumulative, 0.90))
    lower_to = int(np.searchsorted(cumulative, 0.10)) + 1
    uppers = np.unique(np.linspace(upper_from, BINS, candidates).astype(int))  # edge indices
    lowers = np.unique(np.linspace(0, lower_to, candidates).astype(int))
    b = np.maximum(edges[uppers], 0.0) if hi > 0 else np.zeros(1)
    a = np.minimum(edges[lowers], 0.0) if lo < 0 else np.zeros(1)
    ub = uppers if hi > 0 else np.array([BINS])
    la = lowers if lo < 0 else np.array([0])
    # Values in bins at or beyond edge index u are clipped to b; below edge index l, to a.
    above = (s2[-1] - s2[ub]) - 2 * b * (s1[-1] - s1[ub]) + b**2 * (s0[-1] - s0[ub])
    below = s2[la] - 2 * a * s1[la] + a**2 * s0[la]
    inside = total - (s0[-1] - s0[ub])[None, :] - s0[la][:, None] - histogram.zeros
    step = (b[None, :] - a[:, None]) / 255
    error = above[None, :] + below[:, None] + np.maximum(inside, 0) * step**2 / 12
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(a[i]), float(b[j])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _least_divergence_range(rows: np.ndarray, lo: float, hi: float, steps: int = 20) -> tuple[float, float]:
    """The (min, max) within (``lo``, ``hi``) whose int8 grid moves the softmax of ``rows``
    (positions x classes) least from the float one (mean KL divergence): a coarse grid of bounds
    from the extremes inwards, then a finer one around its best."""
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), LOGIT_ROWS)).astype(np.int64)].astype(np.float64)
    reference = _log_softmax(rows)
    weights = np.exp(reference)
    lo, hi = min(lo, 0.0), max(hi, 0.0)

    def divergence(f_lo: float, f_hi: float) -> float:
        a, b = lo * f_lo, hi * f_hi
        if b - a <= 0:
            return np.inf
        scale = (b - a) / 255
        zero_point = np.round(-128 - a / scale)
        grid = (np.clip(np.round(rows / scale + zero_point), -128, 127) - zero_point) * scale
        return float(np.mean(np.sum(weights * (reference - _log_softmax(grid)), axis=1)))

    coarse = np.linspace(1 / steps, 1, steps)  # fractions of the extremes
    _, f_lo, f_hi = min((divergence(a, b), a, b) for a in coarse for b in coarse)
    fine = np.linspace(-1 / steps, 1 / steps, 9)
    candidates = [(a, b) for a in f_lo + fine for b in f_hi + fine if 0 < a <= 1 and 0 < b <= 1]
    _, f_lo, f_hi = min((divergence(a, b), a, b) for a, b in candidates)
    return lo * f_lo, hi * f_hi


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
