"""Bias correction: the mean error int8 weights add to each output channel, taken back out of the bias.

Rounding a convolution's weights to int8 changes its output by ``(W_q - W) x`` for input ``x``;
over the calibration images that error has the mean ``(W_q - W) E[x]`` per output channel, a
shift the int32 bias can absorb exactly (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019, section 4.2; here with ``E[x]`` measured rather than
inferred from BatchNorm). For every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED of a full-int8
file, ``E[x]`` is the per-channel mean of its input over the calibration images (in the calibrated
float file, whose tensors carry the same names), ``W`` the float weights of the same op there, and
the correction is written into the int32 bias at the bias's own scale. Depthwise convolutions
gain most: a 3x3 kernel per channel averages little of its rounding away.
"""

from __future__ import annotations

import numpy as np

CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _float_weights(calibrated) -> dict[str, np.ndarray]:
    """Output tensor name -> the float weights of the op writing it, in the calibrated file."""
    weights = {}
    for op in calibrated.graph.operators:
        if calibrated.name(op) in CORRECTED_OPS and len(op.inputs) >= 2:
            w = calibrated.graph.tensors[int(op.inputs[1])]
            data = calibrated.model.buffers[w.buffer].data
            if data is not None and calibrated.tensor_types[w.type] == "FLOAT32":
                out = calibrated.graph.tensors[int(op.outputs[0])].name
                weights[out] = np.frombuffer(bytes(data), np.float32).reshape(w.shape)
    return weights


def correct_biases(quantized: bytes, calibrated: bytes, input_means: dict[bytes, np.ndarray]) -> tuple[bytes, int]:
    """``quantized`` with every weighted op's int32 bias corrected; and how many ops were.
    ``input_means``: tensor name -> mean over the calibration images per channel (last axis)."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph, schema

    graph, reference = TFLiteGraph.read(quantized), TFLiteGraph.read(calibrated)
    if graph is None or reference is None:
        return quantized, 0
    float_weights = _float_weights(reference)
    buffer_users: dict[int, int] = {}
    for tensor in graph.graph.tensors:
        buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1
    corrected = 0
    for op in graph.graph.operators:
        name = graph.name(op)
        if name not in CORRECTED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (graph.graph.tensors[int(t)] for t in op.inputs[:3])
        mean = input_means.get(graph.float_name(int(op.inputs[0])))
        weights = float_weights.get(graph.float_name(int(op.outputs[0])))
        if mean is None or weights is None or not graph.is_int8(int(op.inputs[1])) or b.quantization is None:
            continue
        q = np.frombuffer(bytes(graph.model.buffers[w.buffer].data), np.int8).reshape(w.shape).astype(np.float64)
        if q.shape != weights.shape:
            continue
        axis = int(w.quantization.quantizedDimension)
        shape = [1] * q.ndim
        shape[axis] = -1
        error = q * np.asarray(w.quantization.scale, np.float64).reshape(shape) - weights
        shift = _mean_output_error(name, error, mean)
        if shift is None:
            continue
        bias = np.frombuffer(bytes(graph.model.buffers[b.buffer].data), np.int32).astype(np.int64)
        step = np.asarray(b.quantization.scale, np.float64)
        new = np.clip(bias - np.round(shift / step), -(2**31), 2**31 - 1).astype(np.int32)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(new.tobytes(), np.uint8)
        if buffer_users[b.buffer] > 1:  # a bias shared with another op gets its own copy
            graph.model.buffers.append(buffer)
            b.buffer = len(graph.model.buffers) - 1
        else:
            graph.model.buffers[b.buffer] = buffer
        corrected += 1
    return (graph.write(), corrected) if corrected else (quantized, 0)


def _mean_output_error(op: str, error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``(W_q - W) E[x]`` per output channel, or None where the layout is not the plain one."""
    if op == "CONV_2D" and error.ndim == 4 and error.shape[3] == mean.size:  # [O, kh, kw, I]
        return error.sum(axis=(1, 2)) @ mean
    if op == "DEPTHWISE_CONV_2D" and error.ndim == 4 and error.shape[3] % mean.size == 0:  # [1, kh, kw, C*M]
        return error.sum(axis=(0, 1, 2)) * np.repeat(mean, error.shape[3] // mean.size)
    if op == "FULLY_CONNECTED" and error.ndim == 2 and error.shape[1] == mean.size:  # [O, I]
        return error @ mean
    return None
