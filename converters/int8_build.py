"""The full-int8 file: calibrate, choose every tensor's range (``int8_ranges``), quantize, and with
``auto`` keep the method whose file loses least on held-out calibration images.

``build_full_int8`` is what the conversion's full-int8 variant calls; ``Int8Build.record`` is what
``int8_ranges.json`` and the manifest say of the file; ``calibrated_with_ranges`` is the start of
the mixed-precision search (a calibrated file with the chosen ranges written in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from seg2tflite.converters.int8_range_rules import CANDIDATES, RANGE_METHODS, RULES_REVISION, Histogram
from seg2tflite.converters.int8_ranges import (
    HELD_OUT_EVERY,
    RangeStatistics,
    Representative,
    calibrate,
    calibrated_ranges,
    choose_ranges,
    collect_statistics,
    quantize,
    tied_groups,
    with_ranges,
)
from seg2tflite.quiet import muted_stderr


@dataclass
class Int8Build:
    """The int8 file and how its ranges were chosen (for the manifest)."""

    content: bytes
    method: str  # the method whose ranges the file has
    requested: str
    scores: dict[str, dict] = field(default_factory=dict)  # auto: each method's held-out error
    narrowed: int = 0  # tensors whose range is narrower than min/max
    tensors: int = 0
    bias_corrected: int = 0  # ops whose int32 bias took their weights' mean error back out

    def record(self) -> dict:
        return {
            "method": self.method,
            "requested": self.requested,
            "why": (
                f"auto: least held-out error of {', '.join(CANDIDATES)} on 1 in {HELD_OUT_EVERY} calibration images"
                if self.requested == "auto"
                else "requested"
            ),
            "held_out_scores": self.scores,
            "rules_revision": RULES_REVISION,
            "tensors": self.tensors,
            "narrower_than_minmax": self.narrowed,
            "bias_corrected_ops": self.bias_corrected,
        }


def build_full_int8(
    saved_model,
    representative: Representative,
    method: str = "auto",
    int8_io: str = "int8",
    per_channel: bool = True,
    finish: Callable[[bytes], bytes] = lambda content: content,
    threads: int | None = None,
    bias_correction: bool = False,
) -> Int8Build:
    """Full int8 with ``method``'s ranges (``minmax``: the calibrator's own) and, with
    ``bias_correction``, its weights' mean error taken out of the biases (``int8_bias``);
    ``finish`` is applied to every candidate file (the rewrites the shipped file gets), so
    ``auto`` scores what would ship."""
    from seg2tflite.converters.int8_bias import correct_biases

    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}; choose from {RANGE_METHODS}")
    calibrated = calibrate(saved_model, representative, per_channel)
    if method == "minmax" and not bias_correction:
        tensors = len(calibrated_ranges(calibrated))
        return Int8Build(finish(quantize(calibrated, int8_io, per_channel)), "minmax", method, tensors=tensors)
    hold_out = method == "auto" and _count(representative) >= 2 * HELD_OUT_EVERY
    stats = collect_statistics(calibrated, representative, hold_out)
    groups = tied_groups(calibrated, stats.fit)
    corrected = 0

    def build(histograms: dict[int, Histogram], method: str) -> bytes:
        nonlocal corrected
        ranges = None if method == "minmax" else choose_ranges(groups, histograms, method)
        content = quantize(calibrated if ranges is None else with_ranges(calibrated, ranges), int8_io, per_channel)
        if bias_correction:
            content, corrected = correct_biases(content, calibrated, stats.channel_means)
        return finish(content)

    scores = {}
    chosen = "mse" if method == "auto" else method
    if hold_out:
        for candidate in CANDIDATES:
            scores[candidate] = held_out_error(build(stats.fit, candidate), stats, threads)
        chosen = min(CANDIDATES, key=lambda m: (scores[m]["disagreement"], scores[m]["relative_error"]))
    histograms = stats.all_images()
    content = build(histograms, chosen)
    ranges, plain = choose_ranges(groups, histograms, chosen), choose_ranges(groups, histograms, "minmax")
    narrowed = (
        0 if chosen == "minmax" else sum(1 for t in ranges if ranges[t][1] - ranges[t][0] < plain[t][1] - plain[t][0] - 1e-12)
    )
    return Int8Build(content, chosen, method, scores, narrowed, len(ranges), corrected)


def calibrated_with_ranges(saved_model, representative: Representative, method: str = "minmax") -> bytes:
    """The calibrated file with ``method``'s ranges (``minmax``, ``percentile`` or ``mse``) written in:
    what every later ``quantize`` of it starts from (the mixed-precision search's candidates)."""
    calibrated = calibrate(saved_model, representative)
    if method == "minmax":
        return calibrated
    if method not in CANDIDATES:
        raise ValueError(f"{method!r}: give a range method that was chosen, one of {CANDIDATES}")
    stats = collect_statistics(calibrated, representative, hold_out=False)
    return with_ranges(calibrated, choose_ranges(tied_groups(calibrated, stats.fit), stats.fit, method))


def _count(representative: Representative) -> int:
    return sum(1 for _ in representative())


def held_out_error(content: bytes, stats: RangeStatistics, threads: int | None = None) -> dict:
    """The int8 file against the float model on the held-out images: the share of pixels whose
    argmax differs (for class logits) and the output's squared error over its variance, in LiteRT
    with XNNPACK. A file XNNPACK cannot prepare scores infinite and is not run on the builtin
    kernels here: those abort the process on some int8 files, and the shipped file's first load,
    in its own step, is where that is caught and reported."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with muted_stderr():
            interpreter = Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:  # never chosen; with every candidate refused, min/max (the converter's) ships
        refused = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        return {"disagreement": float("inf"), "relative_error": float("inf"), "refused": refused}
    inputs = interpreter.get_input_details()
    (output,) = interpreter.get_output_details()
    differ = pixels = 0
    squared = energy = 0.0
    for sample, reference in zip(stats.held_out_inputs, stats.held_out_outputs):
        for detail, x in zip(inputs, sample):
            interpreter.set_tensor(detail["index"], _as_input(x, detail))
        interpreter.invoke()
        y = _dequantized(interpreter.get_tensor(output["index"]), output)
        ref = reference.astype(np.float32)
        if ref.ndim == 4 and ref.shape[-1] > 1:  # NHWC class logits
            differ += int(np.count_nonzero(y.argmax(-1) != ref.argmax(-1)))
            pixels += ref.shape[0] * ref.shape[1] * ref.shape[2]
        elif np.issubdtype(reference.dtype, np.integer) and reference.ndim == 3:  # a class map
            differ += int(np.count_nonzero(y != ref))
            pixels += ref.size
        squared += float(np.sum((y - ref) ** 2))
        energy += float(np.sum((ref - ref.mean()) ** 2))
    return {"disagreement": differ / max(pixels, 1), "relative_error": squared / max(energy, 1e-30)}


def _as_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype == np.int8 and scale:
        return np.clip(np.round(np.asarray(x, np.float32) / scale + zero_point), -128, 127).astype(np.int8)
    return np.asarray(x, dtype)


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]) == np.int8 and scale and y.dtype == np.int8:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)
