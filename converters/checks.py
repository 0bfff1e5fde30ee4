"""What a conversion refuses before it builds or writes anything: a head that does not predict
the data's classes, weights that hold NaN, an ONNX input whose size is not fixed; and what
``seg2tflite convert`` checks before the model is built or TensorFlow loaded (settings that do
not go together, the head a checkpoint or an ONNX file predicts, the memory the size needs)."""

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


def check_convert_settings(
    *,
    model: str | None = None,
    onnx: str | None = None,
    module: str | None = None,
    checkpoint: str | None = None,
    weights: str | None = None,
    input_size: tuple[int, int] | None = None,
    variants=(),
) -> None:
    """Refuse settings of one conversion that do not go together: a variant named twice, weights
    for the wrong kind of source, a model of the user's own without a size. ``model``, ``onnx``
    and ``module`` are the three sources (one is given)."""
    from seg2tflite.converters.config import ConvertConfig

    variants = list(variants)
    repeated = [v for v in dict.fromkeys(variants) if variants.count(v) > 1]
    if repeated:
        raise UserError(f"{setting('variants')}: {', '.join(repeated)} repeated; name each variant once")
    if onnx is not None and checkpoint is not None:
        raise UserError(
            f"{setting('checkpoint')}: applies to {setting('model')}; an {setting('onnx')} file carries its own weights, "
            f"drop {setting('checkpoint')}"
        )
    if weights is not None and module is None:
        raise UserError(
            f"{setting('weights')}: applies to {setting('module')}; use {setting('checkpoint')} with {setting('model')}"
        )
    if module is not None:
        if checkpoint is not None:
            raise UserError(
                f"{setting('checkpoint')}: applies to {setting('model')}; give a {setting('module')} model its weights with "
                f"{setting('weights', 'FILE.safetensors')}"
            )
        if input_size is None:
            raise UserError(
                f"{setting('module', module, f'module {module}')}: a model of your own has no registered size; "
                f"pass {setting('input_size', 'H W', 'input_size=(H, W)')}"
            )
    if input_size is not None:
        ConvertConfig(input_size=tuple(input_size))


def check_model_name(name: str) -> None:
    """Refuse a model name the registry does not hold."""
    from seg2tflite.models import list_models

    if name not in list_models():
        raise UserError(f"{setting('model', name, f'model {name!r}')}: unknown model; choose one of {', '.join(list_models())}")


def check_data_classes(num_classes: int | None, data_spec: str, data_classes: int) -> None:
    """Refuse a head size the calibration data does not have."""
    if num_classes is not None and num_classes != data_classes:
        raise UserError(
            f"{setting('num_classes', str(num_classes), f'num_classes={num_classes}')}: {data_spec} has {data_classes} "
            f"classes; pass {setting('num_classes', str(data_classes), f'num_classes={data_classes}')} or calibration data "
            f"with {num_classes} classes"
        )


def checkpoint_classes(checkpoint, data_spec: str, data_classes: int) -> int | None:
    """The head size this project's checkpoint records (None for other formats), refused up front
    when it is not the calibration data's."""
    if checkpoint is None:
        return None
    from seg2tflite.models.checkpoint import read_checkpoint_config, resolve_weights_file

    weights = resolve_weights_file(checkpoint)
    if not weights.with_suffix(".json").is_file():
        return None
    classes = read_checkpoint_config(weights).get("num_classes")
    if classes is not None and classes != data_classes:
        raise UserError(
            f"{setting('checkpoint', str(checkpoint), f'checkpoint {checkpoint}')}: its model predicts {classes} classes, "
            f"but {data_spec} has {data_classes}; calibrate on the data it was trained for (with {classes} classes)"
        )
    return classes


def onnx_classes(path: str, size, data_spec: str, data_classes: int) -> int | None:
    """The class count of an ONNX file's logits (shape inference, no run), refused up front when
    it is not the calibration data's."""
    from seg2tflite.converters.onnx_export import check_ops_carried, onnx_output_classes

    model = load_onnx(path)
    check_ops_carried(model, path)  # an op the chain cannot carry is the first thing to say
    classes = onnx_output_classes(model, size)
    if classes is not None and classes != data_classes:
        raise UserError(
            f"{path}: the ONNX model predicts {classes} classes but {data_spec} has {data_classes}; "
            f"calibrate on the data it was trained for ({setting('calib_data')} with {classes} classes)"
        )
    return classes


def check_convert_memory(
    config,
    num_classes: int | None,
    *,
    model: str | None = None,
    onnx: str | None = None,
    module: str | None = None,
    size_given: bool = True,
) -> None:
    """Refuse an input size whose images and activations alone exceed this machine's memory
    (``config``: the ``ConvertConfig``; ``size_given``: the size was asked for, not the model's own)."""
    from seg2tflite.converters.images import conversion_memory
    from seg2tflite.memory import check_fits

    if model is not None:
        from seg2tflite.models import get_model_config
        from seg2tflite.models.footprint import activation_bytes

        activations = lambda h, w: activation_bytes(model, (h, w), num_classes)  # noqa: E731
        what, divisor = f"converting {model}", get_model_config(model).size_divisor
    elif module is not None:
        activations = lambda h, w: None  # noqa: E731 - your own model: nothing to estimate it from before it is built
        what, divisor = f"converting {module}", 1
    else:
        from seg2tflite.converters.onnx_export import onnx_activation_bytes

        graph = load_onnx(onnx)
        activations = lambda h, w: onnx_activation_bytes(graph, (h, w))  # noqa: E731
        what, divisor = f"converting {onnx}", 1
    need = conversion_memory(activations, config.needs_calibration, config.calib_size, config.parity_images)
    where = None if size_given else f"{model or onnx}: input {config.input_size[0]}x{config.input_size[1]}"
    check_fits(need, config.input_size, what, where, divisor)
