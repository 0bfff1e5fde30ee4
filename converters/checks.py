"""What a conversion refuses before it builds or writes anything: a head that does not predict
the data's classes, weights that hold NaN, an ONNX input whose size is not fixed."""

from __future__ import annotations

from pathlib import Path

from seg2tflite.converters.onnx_export import load_onnx
from seg2tflite.data.base import describe_data
from seg2tflite.errors import UserError, on_command_line, setting


def check_class_count(num_classes: int, datasets, onnx_source: str | None = None) -> None:
    """Refuse a model whose head does not predict the classes of the calibration/parity data."""
    for data in datasets:
        dataset_classes = getattr(getattr(data, "info", None), "num_classes", None)
        if dataset_classes is None or dataset_classes == num_classes:
            continue
        if onnx_source is not None:
            raise UserError(
                f"{onnx_source}: the ONNX model predicts {num_classes} classes but {describe_data(data)} has "
                f"{dataset_classes}; calibrate on the data it was trained for "
                f"({setting('calib_data')} with {num_classes} classes)"
            )
        if on_command_line():
            raise UserError(
                f"{setting('num_classes')}: the model predicts {num_classes} classes but {describe_data(data)} has "
                f"{dataset_classes}; pass {setting('num_classes', str(dataset_classes))} (or a checkpoint with that head)"
            )
        raise UserError(
            f"model: it predicts {num_classes} classes but {describe_data(data)} has {dataset_classes}; give it a "
            f"{dataset_classes}-class head (num_classes={dataset_classes} for a registry model) or calibrate on data "
            f"with {num_classes} classes"
        )


def check_finite_weights(model) -> None:
    """Refuse a model whose parameters hold NaN or Inf: every stage would compute NaN, and the
    chain would blame the conversion for it."""
    import torch

    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise UserError(
            f"{setting('checkpoint', python='model')}: the model's weights hold NaN or Inf in {len(bad)} tensors ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); the checkpoint is broken (e.g. training diverged), so there is nothing to convert"
        )


def resolve_onnx_input_size(onnx_path: str | Path, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The input size to convert an ONNX file at: the one given, else the one fixed in the file."""
    from seg2tflite.converters.onnx_export import onnx_input_size

    if input_size is not None:
        return tuple(int(s) for s in input_size)
    size = onnx_input_size(onnx_path)
    if size is None:
        model = load_onnx(onnx_path)
        graph_input = model.graph.input[0]
        dims = [d.dim_value or d.dim_param or "?" for d in graph_input.type.tensor_type.shape.dim]
        raise UserError(
            f"{onnx_path}: input {graph_input.name!r} has dynamic dimensions {dims}; "
            f"pass {setting('input_size', 'H W', 'input_size=(H, W)')}"
        )
    return size


def check_module_classes(spec: str, num_classes: int, datasets) -> None:
    """Refuse a ``--module`` model whose output channels are not the data's classes; the advice is
    its head or the data (``--num-classes`` does not change a model of the user's own)."""
    for data in datasets:
        classes = getattr(getattr(data, "info", None), "num_classes", None)
        if classes is not None and classes != num_classes:
            raise UserError(
                f"{setting('module', spec)}: the model predicts {num_classes} classes (its output channels) but "
                f"{describe_data(data)} has {classes}; {setting('num_classes')} cannot change a model of your own: give it a "
                f"{classes}-class head (or {setting('weights')} of one), or calibrate on data with {num_classes} classes"
            )
