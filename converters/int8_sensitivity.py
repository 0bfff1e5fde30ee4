"""Where full int8 loses: every int8 op's output against the float32 file's same tensor.

Both files run on the parity images on LiteRT's builtin kernels with every tensor kept; each op of
the full-int8 file whose output tensor is int8 and has a same-named, same-shaped float tensor in
the float32 file (the converter keeps the names but for the quantized model input and output,
``TFLiteGraph.float_name``; the rewrites' own tensors have none) is scored by
its signal-to-quantization-noise ratio, ``SQNR = 10 log10(sum(ref^2) / sum((int8 - ref)^2))`` in dB,
over all images. The error is what reaches that tensor: its own rounding and everything upstream.
Lowest SQNR first: the ops a user looks at when the int8 file loses accuracy.

``model_explorer_node_data`` writes the same figures in Model Explorer's node-data form
(``{"results": {output tensor name: {"value": dB}}, "gradient": [...]}``), to colour the graph.
"""

from __future__ import annotations

import math

import numpy as np

from seg2tflite.converters.int8_ranges import every_tensor_interpreter

SENSITIVITY_FILE = "full_int8_sensitivity.json"  # Model Explorer node data, beside the file


def _feed(interpreter, image_nhwc: np.ndarray, pixels: np.ndarray | None) -> None:
    (detail,) = interpreter.get_input_details()
    dtype = np.dtype(detail["dtype"])
    x = pixels if dtype == np.uint8 and pixels is not None else image_nhwc
    scale, zero_point = detail["quantization"]
    if dtype == np.int8 and scale:
        x = np.clip(np.round(x / scale + zero_point), -128, 127)
    interpreter.set_tensor(detail["index"], np.asarray(x, dtype))
    interpreter.invoke()


def op_sensitivity(float32: bytes, full_int8: bytes, images: np.ndarray, pixels: np.ndarray | None = None) -> list[dict]:
    """``[{op, tensor, sqnr_db, relative_rmse}]`` for every comparable int8 op, lowest SQNR first.
    ``images``: (N, 3, H, W) float32 as the files' float input takes them (NCHW, normalised);
    ``pixels``: the same as (N, H, W, 3) uint8 for files that take pixels."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    reference, quantized = every_tensor_interpreter(float32), every_tensor_interpreter(full_int8)
    graph = TFLiteGraph.read(full_int8)
    float_tensors = {t["name"]: t for t in reference.get_tensor_details() if np.dtype(t["dtype"]) == np.float32}
    ops = []
    for op in quantized._get_ops_details():
        for t in op["outputs"]:
            detail = quantized._get_tensor_details(int(t), 0)
            ref = float_tensors.get(graph.float_name(int(t)).decode() if graph is not None else detail["name"])
            scale, zero_point = detail["quantization"]
            if np.dtype(detail["dtype"]) == np.int8 and scale and ref is not None and list(ref["shape"]) == list(detail["shape"]):
                ops.append((op["op_name"], detail["name"], int(t), ref["index"], scale, zero_point))
    signal = np.zeros(len(ops))
    noise = np.zeros(len(ops))
    for i, image in enumerate(np.asarray(images, np.float32)):
        x = image.transpose(1, 2, 0)[None]
        _feed(reference, x, None if pixels is None else pixels[i : i + 1])
        _feed(quantized, x, None if pixels is None else pixels[i : i + 1])
        for j, (_, _, q_index, r_index, scale, zero_point) in enumerate(ops):
            ref = reference.get_tensor(r_index).astype(np.float64)
            deq = (quantized.get_tensor(q_index).astype(np.float64) - zero_point) * scale
            signal[j] += float(np.sum(ref**2))
            noise[j] += float(np.sum((deq - ref) ** 2))
    rows = []
    for (name, tensor, *_), s, n in zip(ops, signal, noise):
        sqnr = math.inf if n == 0 else (-math.inf if s == 0 else 10 * math.log10(s / n))
        rows.append({"op": name, "tensor": tensor, "sqnr_db": sqnr, "relative_rmse": math.sqrt(n / s) if s else math.inf})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def model_explorer_node_data(rows: list[dict]) -> dict:
    """The rows as Model Explorer node data keyed by output tensor name, red (low SQNR) to green."""
    finite = [r for r in rows if math.isfinite(r["sqnr_db"])]
    return {
        "results": {r["tensor"]: {"value": round(r["sqnr_db"], 3)} for r in finite},
        "gradient": [{"stop": 0, "bgColor": "#d7301f"}, {"stop": 0.5, "bgColor": "#fdcc8a"}, {"stop": 1, "bgColor": "#1a9850"}],
    }


def sensitivity_lines(rows: list[dict], worst: int = 5) -> list[str]:
    """The worst ops in one line each, for the log and the report."""
    return [f"{r['op']} {r['tensor']}: {r['sqnr_db']:.1f} dB" for r in rows[:worst]]
