"""PyTorch -> ONNX: export the deploy form, fix the shapes, check, simplify, apply the rewrites.

Every ONNX file the converter hands to onnx2tf goes through ``prepare_onnx``, whether exported
here or given by the user: one static (1, 3, H, W) input, (1, K, H, W) logits out, checked by
``onnx.checker`` and simplified by onnxsim (which also folds the Shape/Gather/Concat chains that
make onnx2tf crash on token LayerNorms), then ``onnx_surgery.apply_workarounds``. While tracing,
an adaptive average pool whose bins do not divide its input is computed over the same fixed
windows, and a max unpooling is exported without indices (``onnx_export_patches``), which the
exporter otherwise refuses.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from seg2tflite.atomic import atomic_write_bytes
from seg2tflite.converters.onnx_export_patches import exact_adaptive_pools, unpooling_without_indices
from seg2tflite.converters.onnx_surgery import apply_workarounds
from seg2tflite.converters.onnx_to_tf import resize_nodes_read_as_opset17
from seg2tflite.errors import UserError, setting

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# onnxsim 0.4.36 carries its own onnx checker, which reads IR versions up to 10 (onnx 1.16); IR 10
# covers the default-domain opsets up to 21. The installed onnx saves IR 11+ by default.
SIMPLIFIER_MAX_IR = 10
SIMPLIFIER_MAX_OPSET = 21


@dataclass
class PreparedOnnx:
    model: onnx.ModelProto
    input_name: str
    output_name: str
    num_classes: int
    rewrites: list[str] = field(default_factory=list)


def export_onnx(
    model: nn.Module, input_size: tuple[int, int], opset: int = 20, notes: list[str] | None = None
) -> onnx.ModelProto:
    """Trace ``model`` (already in deploy form) to ONNX with torch.onnx.export(dynamo=False).

    The TorchScript exporter names nodes after module paths (``/decoder/fuse/Conv``), which is
    what lets a divergence be named back to its PyTorch module. ``notes`` receives one line per
    export-time rewrite (for the manifest).
    """
    model = model.eval()
    x = torch.zeros(1, 3, *input_size)
    buf = io.BytesIO()
    try:
        with torch.no_grad(), exact_adaptive_pools(notes), unpooling_without_indices(notes):
            torch.onnx.export(
                model,
                (x,),
                buf,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:  # the exporter's own message (or the unpooling's), and where in the model it was
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = export_failure_site(model, e.__traceback__)
        raise UserError(f"{setting('model')}: torch.onnx.export failed at opset {opset}{where}: {first[:300]}") from None
    return onnx.load_from_string(buf.getvalue())


def export_failure_site(model: nn.Module, tb) -> str:
    """`` in module `name` (Type), op `function` `` for the innermost module of ``model`` whose
    forward was running when tracing failed, and the first torch function it called on the way
    (``max_unpool2d``); empty when the traceback shows neither."""
    import traceback

    names = {id(m): name for name, m in model.named_modules()}
    module, calls = None, []
    for frame, _ in traceback.walk_tb(tb):
        owner, file = frame.f_locals.get("self"), frame.f_code.co_filename.replace("\\", "/")
        if frame.f_code.co_name == "forward" and id(owner) in names:
            module, calls = owner, []
        elif module is not None and "/torch/nn/modules/" not in file:
            calls.append((frame.f_code.co_name, "/torch/" in file or file == __file__))
    if module is None:
        return ""
    op = next((name for name, from_torch in calls if from_torch), calls[0][0] if calls else None)
    name = names[id(module)] or "(the model itself)"
    return f" in module `{name}` ({type(module).__name__})" + (f", op `{op}`" if op else "")


def onnx_input_size(path: str | Path) -> tuple[int, int] | None:
    """The (H, W) fixed in an ONNX file's input, or None when they are dynamic."""
    model = load_onnx(path)
    dims = _input_dims(model, str(path))
    h, w = dims[2], dims[3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    from onnx.external_data_helper import load_external_data_for_model

    from seg2tflite.records import check_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
        check_external_data(model, path)  # a regular file beside it, never through a link to elsewhere
        load_external_data_for_model(model, str(path.parent))
        return model
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a readable ONNX file ({type(e).__name__}: {str(e)[:200]})") from None


def _input_dims(model: onnx.ModelProto, source: str) -> list[int | str]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{source}: the model has {len(inputs)} inputs; only single-image models (1 input) are supported")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise UserError(f"{source}: input {inputs[0].name!r} has shape {dims}; expected (batch, 3, H, W) NCHW")
    return dims


def prepare_onnx(model: onnx.ModelProto, input_size: tuple[int, int] | None, source: str, rewrites: bool = True) -> PreparedOnnx:
    """Fix the input to (1, 3, H, W), check, simplify, rewrite. ``source`` names the file in errors."""
    dims = _input_dims(model, source)
    input_name = next(i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})
    if isinstance(dims[1], int) and dims[1] != 3:
        raise UserError(f"{source}: input {input_name!r} has {dims[1]} channels; expected 3 (RGB, NCHW)")
    static_hw = (dims[2], dims[3]) if all(isinstance(d, int) and d > 0 for d in dims[2:]) else None
    if input_size is None:
        if static_hw is None:
            raise UserError(
                f"{source}: input {input_name!r} has dynamic dimensions {dims}; "
                f"pass {setting('input_size', 'H W', 'input_size=(H, W)')} to fix them"
            )
        input_size = static_hw
    input_size = tuple(int(s) for s in input_size)
    if static_hw is not None and static_hw != input_size:
        raise UserError(
            f"{source}: input {input_name!r} is fixed to {static_hw[0]}x{static_hw[1]} but {setting('input_size')} is "
            f"{input_size[0]}x{input_size[1]}; "
            f"pass {setting('input_size', f'{static_hw[0]} {static_hw[1]}', f'input_size={static_hw}')}"
        )
    check_ops_carried(model, source)
    model = _fix_input_shape(_simplifiable_ir(model, source), input_name, [1, 3, *input_size])
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise UserError(f"{source}: onnx.checker rejects the model: {str(e).strip().splitlines()[0][:300]}") from None
    model = simplify(model, input_name, [1, 3, *input_size])
    applied = []
    if rewrites:
        model, applied = apply_workarounds(model)
        onnx.checker.check_model(model, full_check=True)
        applied += [
            f"{name}: Resize with align_corners/asymmetric coordinates converted by onnx2tf as at opset 17, where it honours them"
            for name in resize_nodes_read_as_opset17(model)
        ]
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise UserError(f"{source}: the model has {len(outputs)} outputs; expected one (1, K, H, W) logits tensor")
    out_dims = [d.dim_value for d in outputs[0].type.tensor_type.shape.dim]
    if len(out_dims) != 4 or out_dims[0] != 1 or tuple(out_dims[2:]) != input_size or out_dims[1] < 1:
        raise UserError(
            f"{source}: output {outputs[0].name!r} has shape {out_dims}; the model must return (1, K, "
            f"{input_size[0]}, {input_size[1]}) logits at input resolution"
        )
    return PreparedOnnx(model, input_name, outputs[0].name, out_dims[1], applied)


def _simplifiable_ir(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """``model`` with an IR version onnxsim reads: a newer one is lowered to 10, which changes
    nothing for opsets up to 21 (IR 11 and 12 add only new data types and newer opsets)."""
    if model.ir_version <= SIMPLIFIER_MAX_IR:
        return model
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > SIMPLIFIER_MAX_OPSET:
        raise UserError(
            f"{source}: opset {opset} (IR version {model.ir_version}) is newer than the chain's ONNX simplifier reads "
            f"(opset <= {SIMPLIFIER_MAX_OPSET}); export the model again with opset_version={SIMPLIFIER_MAX_OPSET} or lower"
        )
    lowered = onnx.ModelProto.FromString(model.SerializeToString())
    lowered.ir_version = SIMPLIFIER_MAX_IR
    return lowered


def check_ops_carried(model: onnx.ModelProto, source: str) -> None:
    """Refuse, before any conversion work, a node whose op onnx2tf has no converter for."""
    import importlib.util

    # onnx2tf/ops/OP.py, found without importing onnx2tf (which imports TensorFlow)
    ops = Path(importlib.util.find_spec("onnx2tf").submodule_search_locations[0]) / "ops"

    known: dict[str, bool] = {}
    for node in model.graph.node:
        op = node.op_type
        if op not in known:
            known[op] = op.isidentifier() and (ops / f"{op}.py").is_file()
        if not known[op] or node.domain not in ("", "ai.onnx"):
            where = f"{node.domain}::{op}" if node.domain else op
            raise UserError(
                f"{source}: node {node.name or '(unnamed)'!r} is a {where} op, which onnx2tf cannot convert; "
                "replace it in the PyTorch model (or the ONNX graph) with standard ONNX ops"
            )


def onnx_output_classes(model: onnx.ModelProto, size: tuple[int, int]) -> int | None:
    """K of the (1, K, H, W) logits ``model`` returns at ``size``, from shape inference; None if unknown."""
    try:
        input_name = next(i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})
        inferred = _fix_input_shape(model, input_name, [1, 3, *size])
        dims = inferred.graph.output[0].type.tensor_type.shape.dim
    except Exception:  # noqa: BLE001 - prepare_onnx reports the real problem
        return None
    return dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value > 0 else None


def onnx_activation_bytes(model: onnx.ModelProto, size: tuple[int, int]) -> int | None:
    """Bytes of every tensor of ``model`` at input ``size`` (batch 1), from shape inference alone
    (no data, no run); None when the shapes cannot be inferred."""
    try:
        input_name = next(i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})
        inferred = _fix_input_shape(model, input_name, [1, 3, *size])
    except Exception:  # noqa: BLE001 - no estimate is no refusal; prepare_onnx reports the real problem
        return None
    total = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            n = 1
            for d in dims:
                n *= d.dim_value
            total += 4 * n
    return total + sum(4 * _numel(i.dims) for i in model.graph.initializer)


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _fix_input_shape(model: onnx.ModelProto, input_name: str, shape: list[int]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for graph_input in model.graph.input:
        if graph_input.name == input_name:
            for dim, value in zip(graph_input.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = value
    # Outputs may carry stale symbolic dims; let shape inference fill them in.
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=False)


def simplify(model: onnx.ModelProto, input_name: str, shape: list[int]) -> onnx.ModelProto:
    """onnxsim with the static input shape; its own output check must pass."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={input_name: shape})
    except Exception as e:  # without onnxsim, onnx2tf meets unknown shapes and fails worse
        raise UserError(f"onnxsim could not simplify the model ({type(e).__name__}: {str(e)[:200]})") from None
    if not ok:
        raise UserError("onnxsim: the simplified model does not match the original; report this model")
    return simplified


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    atomic_write_bytes(path, model.SerializeToString())
    return Path(path)
