"""Where a float conversion went wrong: the first layer whose TF tensor differs from ONNX Runtime's.

onnx2tf is run once more with ``check_onnx_tf_outputs_elementwise_close_full``, which evaluates
every ONNX node output in ONNX Runtime and the matching tensor of its TF graph on the same real
image. We capture those pairs (wrapping ``onnx_tf_tensor_validation``) and judge them ourselves:
onnx2tf's own verdict accepts a TF tensor under ANY axis permutation, which calls a wrong
transpose "Matches" (measured on a permute->LayerNorm->permute model: every layer "Matches"
while the logits are 3.7 off). Here a tensor may only be in the ONNX layout or channels-last
(what onnx2tf produces), and must be within ``rel_tol`` of its own value range.

The first diverging ONNX node, in graph order, is named back to the PyTorch module: the
TorchScript exporter names nodes ``/scope/scope/Op`` after module paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from seg2tflite.atomic import private_tempdir
from seg2tflite.converters.onnx_to_tf import ConversionError, run_onnx2tf


def _sanitized(name: str) -> str:
    """The name onnx2tf gives an ONNX tensor when it writes signatures."""
    return re.sub(r"^/", "wa/", name.replace(":", "__"))


def _layouts(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    rank = len(shape)
    perms = [tuple(range(rank))]
    if rank >= 3:
        perms.append((0, *range(2, rank), 1))  # NC... -> N...C
    return perms


# A tensor agrees when its max abs error is within rel_tol of its value range, plus this share of
# its largest magnitude: a tensor whose values all sit near one large value (a LayerNorm's
# 1/std over tokens) has a tiny range, and one float32 step of each value is no finding.
FLOAT32_NOISE = 2.0**-13


def tensor_tolerance(value: np.ndarray, rel_tol: float, atol: float = 1e-5) -> float:
    """How far a tensor may be off and still agree: ``rel_tol`` of its value range, plus the
    float32 noise of its magnitude (``FLOAT32_NOISE`` of its largest absolute value)."""
    if not value.size:
        return atol
    value = value.astype(np.float64)
    return rel_tol * float(np.ptp(value)) + FLOAT32_NOISE * float(np.abs(value).max()) + atol


def compare_tensor(onnx_value: np.ndarray, tf_value: np.ndarray) -> tuple[float | None, str]:
    """Smallest max-abs error over the layouts onnx2tf may use; (None, why) when incomparable."""
    best = None
    for perm in _layouts(onnx_value.shape):
        candidate = onnx_value.transpose(perm)
        if candidate.shape == tuple(tf_value.shape):
            err = float(np.abs(candidate.astype(np.float64) - tf_value.astype(np.float64)).max()) if candidate.size else 0.0
            best = err if best is None else min(best, err)
    if best is None:
        return None, f"layout differs (onnx {onnx_value.shape}, tf {tuple(tf_value.shape)})"
    return best, ""


def module_path(node_name: str, module_names: set[str] | None = None) -> str:
    """``/decoder/fuse/Conv`` -> ``decoder.fuse``, checked against the model's module names.

    Each scope in a TorchScript-exported name is the module's attribute name, with the parent
    repeated when the attribute is a number (``/stem/stem.0/Conv`` is module ``stem.0``).
    """
    parts = [p for p in node_name.split("/") if p]
    if module_names is None:
        parts = parts[:-1]  # the op itself
        while parts and re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?", parts[-1]):
            parts = parts[:-1]  # op-typed scopes added by graph rewrites
        path = ""
        for comp in parts:
            if path and comp.startswith(path.split(".")[-1] + "."):
                path = ".".join(path.split(".")[:-1] + [comp])
            else:
                path = f"{path}.{comp}" if path else comp
        return path
    path = ""
    for comp in parts:
        atoms = path.split(".") if path else []
        found = None
        for k in range(len(atoms), -1, -1):
            candidate = ".".join(atoms[:k] + [comp])
            if candidate in module_names:
                found = candidate
                break
        if found is None:
            break
        path = found
    return path


def locate_divergence(
    onnx_model: onnx.ModelProto,
    image_nhwc: np.ndarray,
    torch_model=None,
    rel_tol: float = 1e-3,
    atol: float = 1e-5,
    workarounds: bool = True,
) -> dict:
    """Compare every intermediate tensor of onnx2tf's TF graph with ONNX Runtime on one image.

    Returns a JSON-ready dict; ``summary`` is the one line a user reads, ``first`` the first
    diverging layer (None when every comparable layer agrees).
    """
    import onnx2tf.onnx2tf as main

    pairs: dict = {}
    original = main.onnx_tf_tensor_validation

    def capture(**kwargs):
        pairs.update(kwargs["output_pairs"])
        return original(**kwargs)

    main.onnx_tf_tensor_validation = capture
    try:
        with private_tempdir("divergence") as work:
            run_onnx2tf(
                onnx_model,
                Path(work) / "saved_model",
                np.asarray(image_nhwc, np.float32)[:1],
                workarounds=workarounds,
                check_onnx_tf_outputs_elementwise_close_full=True,
            )
    except ConversionError as e:
        return {"summary": f"could not re-run onnx2tf to locate the divergence ({e})", "first": None, "layers": []}
    finally:
        main.onnx_tf_tensor_validation = original

    producers = {}
    for node in onnx_model.graph.node:
        for out in node.output:
            producers[_sanitized(out)] = node
    names = {n for n, _ in torch_model.named_modules()} if torch_model is not None else None
    modules = dict(torch_model.named_modules()) if torch_model is not None else {}

    layers, first, last_good = [], None, None
    for (onnx_name, _tf_name), (onnx_value, tf_value) in pairs.items():
        onnx_value, tf_value = np.asarray(onnx_value), np.asarray(tf_value)
        node = producers.get(onnx_name)
        if node is None or onnx_value.dtype.kind != "f" or tf_value.dtype.kind != "f":
            continue
        err, why = compare_tensor(onnx_value, tf_value)
        value_range = float(np.ptp(onnx_value)) if onnx_value.size else 0.0
        entry = {
            "onnx_node": node.name,
            "op_type": node.op_type,
            "tensor": node.output[0] if node.output else onnx_name,
            "shape": list(onnx_value.shape),
            "max_abs_error": err,
            "value_range": value_range,
            "status": "skipped" if err is None else ("diverged" if err > tensor_tolerance(onnx_value, rel_tol, atol) else "ok"),
            "note": why,
        }
        layers.append(entry)
        if entry["status"] == "ok" and first is None:
            last_good = entry
        if entry["status"] == "diverged" and first is None:
            first = entry
    if first is None:
        return {
            "summary": (
                f"onnx2tf's TF graph matches ONNX Runtime at all {sum(layer['status'] == 'ok' for layer in layers)} "
                "comparable layers on this image; the drift comes from other images or from rounding that "
                "accumulates without any one layer breaking"
            ),
            "first": None,
            "layers": layers,
        }
    path = module_path(first["onnx_node"], names)
    first["module"] = path
    first["module_type"] = type(modules[path]).__name__ if path in modules else None
    where = f"module `{path}`" if path else "the model's top-level forward"
    if first["module_type"]:
        where += f" ({first['module_type']})"
    rel = first["max_abs_error"] / first["value_range"] if first["value_range"] > 0 else float("inf")
    summary = (
        f"First diverging layer: ONNX node {first['onnx_node']} ({first['op_type']}) in {where}: "
        f"max abs error {first['max_abs_error']:.3g} = {rel:.2g} of its value range"
    )
    if last_good is not None:
        summary += f"; last matching layer before it: {last_good['onnx_node']}"
    return {"summary": summary, "first": first, "last_good": last_good, "layers": layers}
