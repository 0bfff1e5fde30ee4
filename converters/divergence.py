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
from seg2tflite.converters.compare import LogitComparison
from seg2tflite.converters.onnx_to_tf import ConversionError, onnx_to_saved_model, run_onnx2tf
from seg2tflite.converters.parity import ParityReport, StageResult, float_gate_failures
from seg2tflite.converters.runtimes import OnnxRunner
from seg2tflite.converters.stages import FLOAT_STAGES


def _sanitized(name: str) -> str:
    """The name onnx2tf gives an ONNX tensor when it writes signatures."""
    return re.sub(r"^/", "wa/", name.replace(":", "__"))


def _layouts(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    rank = len(shape)
    perms = [tuple(range(rank))]
    if rank >= 3:
        perms.append((0, *range(2, rank), 1))  # NC... -> N...C
    return perms


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


# -- explaining a broken float gate ------------------------------------------------------


LOCALIZED_DRIFT_RATIO = 1e3  # max/mean drift above this, with every argmax equal: a flipped near-tie


def float64_noise_floor(model, images: np.ndarray) -> dict:
    """How far PyTorch's own float32 logits are from the same model computed in float64: the drift
    no runtime can be expected to beat (max abs difference, and as a fraction of the logit range)."""
    import copy

    import torch

    exact = copy.deepcopy(model).double().eval()
    worst, lo, hi = 0.0, np.inf, -np.inf
    with torch.no_grad():
        for i in range(len(images)):
            x = torch.from_numpy(images[i : i + 1])
            y32 = model(x).double()
            y64 = exact(x.double())
            worst = max(worst, float((y32 - y64).abs().max()))
            lo, hi = min(lo, float(y64.min())), max(hi, float(y64.max()))
    return {"max_abs": worst, "max_abs_over_range": worst / (hi - lo) if hi > lo else float("inf")}


def _is_near_tie(drift: dict) -> bool:
    """Every decisive pixel's argmax equal (flips only where PyTorch's top two logits are near-tied)
    and the drift in a few values: a flipped near-tie, not a wrong function. A class-map file
    (``--output classes``) has no drift figures: never."""
    if drift.get("class_map"):
        return False
    decisive = drift.get("decisive_agreement", drift["argmax_agreement"])
    agree = drift["argmax_agreement"] == 1.0 or decisive == 1.0
    return agree and drift["max_abs"] > LOCALIZED_DRIFT_RATIO * drift["mean_abs"]


def _kernel_disagreement(stage: str, r: StageResult) -> str:
    """The stage matches PyTorch under XNNPACK; only the same file on LiteRT's builtin kernels broke the gate."""
    ours, twin = r.vs_pytorch, r.builtin["vs_xnnpack"]
    text = (
        f"model_{stage}.tflite matches PyTorch under XNNPACK (max drift {ours['max_abs']:.3g}), but LiteRT's builtin "
        f"kernels compute the same file differently (max {twin['max_abs']:.3g}, mean {twin['mean_abs']:.3g} from XNNPACK)"
    )
    if _is_near_tie(twin):
        return text + (
            " in a few values with every argmax equal: the signature of a discontinuous op (max pooling or unpooling "
            "with tied windows) whose ties the two kernels' rounding breaks differently, not of a wrong conversion"
        )
    return text + ": a kernel difference in LiteRT itself; the XNNPACK figures are the ones users get"


def explain_float_failure(
    report: ParityReport, onnx_model, image_nhwc, deploy_model, config, log, parity_images=None
) -> dict | None:
    """Say where the first broken float stage went wrong; None when the float stages all pass."""
    broken = next((s for s in FLOAT_STAGES if s in report.stages and report.stages[s].gate == "fail"), None)
    if broken is None:
        return None
    reference = report.stages.get(report.reference)
    if reference is not None and reference.nonfinite:  # first: a NaN reference explains every broken gate
        return {
            "stage": broken,
            "summary": f"{report.reference}'s own logits hold {reference.nonfinite} NaN/Inf values: the model (its weights "
            "or its forward) computes NaN before any conversion, so no stage can match it; check the checkpoint",
            "first": None,
        }
    if not float_gate_failures(broken, report.stages[broken].vs_pytorch, config, report.reference):
        return {"stage": broken, "summary": _kernel_disagreement(broken, report.stages[broken]), "first": None}
    if broken == "onnx":
        found = {
            "summary": "ONNX Runtime already differs from PyTorch: the deploy form or torch.onnx.export is at fault "
            "(compare model(x) with seg2tflite.models.deploy_form(model)(x) first)",
            "first": None,
        }
    elif broken == "saved_model":
        log("saved_model broke parity; locating the first diverging layer...")
        found = locate_divergence(
            onnx_model, image_nhwc, torch_model=deploy_model, rel_tol=config.float_outlier_drift, workarounds=config.onnx_rewrites
        )
    elif onnx_model is None or image_nhwc is None:
        found = {
            "summary": "the SavedModel passes but model_float32.tflite does not: the TF -> TFLite converter changed the function",
            "first": None,
        }
    else:
        log("model_float32.tflite broke parity where the SavedModel did not; locating the first diverging .tflite op...")
        found = locate_tflite_divergence_from_onnx(
            onnx_model, image_nhwc, deploy_model, rel_tol=config.float_outlier_drift, workarounds=config.onnx_rewrites
        )
    drift = report.stages[broken].vs_pytorch
    if _is_near_tie(drift) and not report.stages[broken].nonfinite:
        floor_text = ""
        if deploy_model is not None and parity_images is not None:
            floor = found["float64_noise_floor"] = float64_noise_floor(deploy_model, parity_images)
            floor_text = (
                f" PyTorch's own float32 logits differ from float64 by {floor['max_abs']:.3g} "
                f"({floor['max_abs_over_range']:.3g} of the range) on the same images."
            )
        found["summary"] = (
            f"the drift sits in a few pixels (max {drift['max_abs']:.3g}, mean {drift['mean_abs']:.3g}) and every "
            "decisive pixel's argmax agrees: the signature of a discontinuous op (max pooling or unpooling with near-tied windows) that "
            f"rounding differences of ~1e-7 flip, rather than of a wrong conversion.{floor_text} "
            f"Otherwise: {found['summary']}"
        )
    return {"stage": broken, **found}


def float16_weights(model: onnx.ModelProto) -> bytes:
    """``model`` folded as the TFLite converter folds it, every float32 weight then rounded to
    float16 and back, serialized: the function a float16 .tflite computes on a CPU (float16
    weights, float32 arithmetic); ``float16_reference.float16_model``."""
    from seg2tflite.converters.float16_reference import float16_model

    return float16_model(model)


def explain_float16_failure(report: ParityReport, onnx_model, float16_run, images: np.ndarray, config) -> dict | None:
    """When only float16 broke its gate: is the file the model with float16 weights (then the drift
    is the model's own response to that rounding), or did the conversion change more? None when
    float16 passed."""
    r = report.stages.get("float16")
    if r is None or onnx_model is None or r.gate != "fail":
        return None
    if r.vs_float16_model:  # measured by the gate itself
        figures = r.vs_float16_model
    else:
        rounded = OnnxRunner(float16_weights(onnx_model), config.num_threads)
        comparison = None
        for i in range(len(images)):
            x = images[i : i + 1]
            ref, out = np.asarray(rounded(x), np.float32), np.asarray(float16_run(x), np.float32)
            comparison = comparison or LogitComparison(num_classes=ref.shape[1], logit_range=report.logit_range)
            comparison.update(ref, out)
        figures = comparison.result()
    share = figures["outlier_share"][f"{config.float_outlier_drift:g}"]
    if not float_gate_failures("model_float16.tflite", figures, config, "the float16-weight model"):
        summary = (
            f"model_float16.tflite computes the model with its weights rounded to float16 (model.onnx so rounded, in "
            f"ONNX Runtime) within the float32 gate (max drift {figures['max_abs']:.3g}, {100 * share:.4f}% outliers): "
            "the drift from PyTorch is the model's own response to float16 weights, not a conversion error (layers "
            "that amplify small weight changes, or a discontinuous op such as an unpooling whose near-tied inputs "
            "that rounding reorders): float16 costs this model that much, whoever converts it"
        )
    else:
        summary = (
            f"model_float16.tflite also differs from the model with float16-rounded weights (max drift "
            f"{figures['max_abs']:.3g}, {100 * share:.4f}% of the values beyond {config.float_outlier_drift:g} of the "
            "range): the float16 conversion changed more than the weights' precision"
        )
    kept = ("max_abs", "mean_abs", "argmax_agreement", "outlier_share")
    return {"stage": "float16", "summary": summary, "first": None, "float16_weights": {k: figures[k] for k in kept}}


# -- the first diverging .tflite op, when the SavedModel is right --------------------------

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


def onnx_intermediates(onnx_model: onnx.ModelProto, image_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor a node of ``onnx_model`` computes on ``image_nchw``, by name (ONNX Runtime)."""
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(onnx_model.SerializeToString()))
    known = {v.name: v for v in model.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            info = known.get(name)
            if name and name not in outputs and info is not None and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                model.graph.output.append(info)
                outputs.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: image_nchw.astype(np.float32)})
    return {n: v for n, v in zip(names, values) if isinstance(v, np.ndarray) and v.dtype.kind == "f"}


def _agrees(tflite_value: np.ndarray, onnx_value: np.ndarray, rel_tol: float) -> bool:
    """Equal in some axis order (the TFLite converter folds layout transposes into their neighbours,
    so a .tflite tensor may hold an ONNX tensor in any order of its axes)."""
    import itertools

    tolerance = tensor_tolerance(onnx_value, rel_tol)
    a, b = np.sort(onnx_value, axis=None).astype(np.float64), np.sort(tflite_value, axis=None).astype(np.float64)
    if a.shape != b.shape or not np.abs(a - b).max(initial=0.0) <= tolerance:  # a necessary condition, cheap
        return False
    squeezed = tflite_value.reshape([d for d in tflite_value.shape if d != 1] or [1])
    dims = [d for d in onnx_value.shape if d != 1] or [1]
    ref = onnx_value.reshape(dims).astype(np.float64)
    for perm in itertools.permutations(range(len(dims))) if len(dims) <= 4 else [tuple(range(len(dims)))]:
        candidate = ref.transpose(perm)
        if candidate.shape == squeezed.shape and np.abs(candidate - squeezed).max(initial=0.0) <= tolerance:
            return True
    return False


def locate_tflite_divergence(tflite_content: bytes, onnx_model: onnx.ModelProto, image_nhwc: np.ndarray, torch_model=None,
                             rel_tol: float = 1e-3) -> dict:  # fmt: skip
    """Run the .tflite on LiteRT's builtin kernels keeping every tensor and ONNX Runtime on the same
    image; a .tflite tensor *agrees* when some ONNX tensor equals it (in the ONNX layout or
    channels-last, within ``tensor_tolerance``), and is *vindicated* when it agrees or feeds an op
    whose output is vindicated (a layout TRANSPOSE, a PAD before a conv). The first op, in
    execution order, whose inputs are all vindicated (or constant) and whose output is not, is
    the first diverging .tflite op: what the TF -> TFLite converter changed."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from seg2tflite.quiet import muted_stderr

    with muted_stderr():
        interpreter = Interpreter(
            model_content=bytes(tflite_content),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
        interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], np.asarray(image_nhwc, np.float32)[:1])
    interpreter.invoke()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    reference = onnx_intermediates(onnx_model, np.asarray(image_nhwc, np.float32)[:1].transpose(0, 3, 1, 2))
    by_size: dict[int, list[str]] = {}
    for name, value in reference.items():
        by_size.setdefault(value.size, []).append(name)
    produced = {i for op in ops for i in op["outputs"]}
    matched: dict[int, str | None] = {}

    def match(index: int) -> str | None:
        if index not in matched:
            value = interpreter.get_tensor(index)
            matched[index] = None
            if value.dtype.kind == "f":
                for name in by_size.get(value.size, []):
                    if _agrees(value, reference[name], rel_tol):
                        matched[index] = name
                        break
        return matched[index]

    vindicated: set[int] = set()
    for op in reversed(ops):
        consumers = [o for o in ops if set(o["inputs"]) & set(op["outputs"])]
        for out in op["outputs"]:
            if match(out) is not None or any(set(c["outputs"]) & vindicated for c in consumers):
                vindicated.add(out)
    modules = dict(torch_model.named_modules()) if torch_model is not None else {}
    names = set(modules) if torch_model is not None else None
    producers = {out: node for node in onnx_model.graph.node for out in node.output}
    for position, op in enumerate(ops):
        inputs = [i for i in op["inputs"] if i >= 0 and i in produced]
        if all(i in vindicated for i in inputs) and not all(o in vindicated for o in op["outputs"]):
            sources = [matched.get(i) for i in inputs]
            nodes = [producers[s] for s in sources if s in producers]
            path = module_path(nodes[-1].name, names) if nodes else ""
            where = f" in module `{path}`" + (f" ({type(modules[path]).__name__})" if path in modules else "") if path else ""
            read = ", ".join(f"ONNX {s}" for s in sources if s) or "the model's input"
            first = {
                "tflite_op": op["op_name"],
                "tflite_index": position,
                "tflite_output": details[op["outputs"][0]]["name"],
                "inputs_match": [s for s in sources if s],
                "module": path,
            }
            summary = (
                f"the SavedModel passes but model_float32.tflite does not: the first diverging .tflite op is "
                f"{op['op_name']} (op {position} of {len(ops)}, output {details[op['outputs'][0]]['name'][:80]!r}){where}: its "
                f"inputs equal {read}, its output equals no ONNX tensor: the TF -> TFLite converter changed it"
            )
            return {"summary": summary, "first": first, "tflite": True}
    return {
        "summary": "the SavedModel passes but model_float32.tflite does not; every .tflite op's output equals an ONNX "
        "tensor on this image (the difference comes from other images)",
        "first": None,
        "tflite": True,
    }


def locate_tflite_divergence_from_onnx(onnx_model, image_nhwc, torch_model=None, rel_tol=1e-3, workarounds=True) -> dict:
    """``locate_tflite_divergence`` on the float32 .tflite built again from ``onnx_model`` (onnx2tf,
    then the TFLite converter, as the chain builds it)."""
    from seg2tflite.converters.tflite_variants import build_tflite

    try:
        with private_tempdir("divergence") as work:
            saved, _ = onnx_to_saved_model(
                onnx_model, Path(work) / "saved_model", np.asarray(image_nhwc, np.float32)[:1], workarounds=workarounds
            )
            content = build_tflite(saved, "float32")
    except ConversionError as e:
        return {"summary": f"could not rebuild the float32 .tflite to locate the divergence ({e})", "first": None}
    return locate_tflite_divergence(content, onnx_model, image_nhwc, torch_model, rel_tol)
