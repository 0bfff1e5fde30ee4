"""Where the TF -> TFLite converter changed the function: the first .tflite op whose output no
ONNX tensor explains.

``locate_tflite_divergence`` runs the file on LiteRT's builtin kernels keeping every tensor and
ONNX Runtime on the same image (``onnx_intermediates``); a .tflite tensor agrees when some ONNX
tensor equals it in some axis order within ``divergence_tf.tensor_tolerance``. The op is named back to the
PyTorch module of its inputs (``divergence_tf.module_path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from seg2tflite.atomic import private_tempdir
from seg2tflite.converters.divergence_tf import module_path, tensor_tolerance
from seg2tflite.converters.onnx_to_tf import ConversionError, onnx_to_saved_model


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
