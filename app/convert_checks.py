"""What ``seg2tflite convert`` checks before the model is built or TensorFlow loaded: the head a
checkpoint or an ONNX file predicts against the calibration data, and the memory the size needs."""

from __future__ import annotations

from seg2tflite.errors import UserError


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
            f"--checkpoint {checkpoint}: its model predicts {classes} classes, but {data_spec} has {data_classes}; "
            f"calibrate on the data it was trained for (with {classes} classes)"
        )
    return classes


def onnx_classes(path: str, size, data_spec: str, data_classes: int) -> int | None:
    """The class count of an ONNX file's logits (shape inference, no run), refused up front when
    it is not the calibration data's."""
    from seg2tflite.converters.onnx_export import check_ops_carried, load_onnx, onnx_output_classes

    model = load_onnx(path)
    check_ops_carried(model, path)  # an op the chain cannot carry is the first thing to say
    classes = onnx_output_classes(model, size)
    if classes is not None and classes != data_classes:
        raise UserError(
            f"{path}: the ONNX model predicts {classes} classes but {data_spec} has {data_classes}; "
            f"calibrate on the data it was trained for (--calib-data with {classes} classes)"
        )
    return classes


def check_convert_memory(args, config, num_classes: int | None) -> None:
    """Refuse an input size whose images and activations alone exceed this machine's memory."""
    from seg2tflite.converters.images import conversion_memory
    from seg2tflite.memory import check_fits

    if args.model is not None:
        from seg2tflite.models import get_model_config
        from seg2tflite.models.footprint import activation_bytes

        activations = lambda h, w: activation_bytes(args.model, (h, w), num_classes)  # noqa: E731
        what, divisor = f"converting {args.model}", get_model_config(args.model).size_divisor
    elif getattr(args, "module", None) is not None:
        activations = lambda h, w: None  # noqa: E731 - your own model: nothing to estimate it from before it is built
        what, divisor = f"converting {args.module}", 1
    else:
        from seg2tflite.converters.onnx_export import load_onnx, onnx_activation_bytes

        model = load_onnx(args.onnx)
        activations = lambda h, w: onnx_activation_bytes(model, (h, w))  # noqa: E731
        what, divisor = f"converting {args.onnx}", 1
    need = conversion_memory(activations, config.needs_calibration, config.calib_size, config.parity_images)
    where = None if args.input_size else f"{args.model or args.onnx}: input {config.input_size[0]}x{config.input_size[1]}"
    check_fits(need, config.input_size, what, where, divisor)
