"""SavedModel -> the five .tflite variants, all with the TF converter, all builtins only.

- float32: plain conversion.
- float16: float16 weights (dequantized at load), float32 compute.
- dynamic_int8: int8 weights, activations quantized on the fly; no calibration.
- full_int8: per-channel int8 weights, int8 activations calibrated on the representative
  dataset, each activation's range chosen by ``int8_ranges`` (``converters.int8_ranges``: min/max,
  percentile, least error, or the best of them on held-out calibration images); input/output
  int8 (or float with ``int8_io="float"``). Ops the int8 kernels cannot
  take stay float (``ops.float_ops`` lists them). Its int8 BATCH_MATMULs get a right-hand zero
  point of 0, its standalone int8 activations become ADDs with the activation fused, and the int8
  ops XNNPACK takes only in float are computed in float32 between int8 tensors (``xnnpack_int8``):
  forms XNNPACK delegates.
- int16x8: int16 activations, int8 weights, calibrated; float input/output.

Every variant loses the layout TRANSPOSEs onnx2tf writes around single-head attention matmuls
(``matmul_layout``).

``SELECT_TF_OPS`` is never enabled: a graph that needs a Flex op fails to convert here.
``app`` (``--input uint8``, ``--output classes``) converts onnx2tf's SavedModel with the app's
ends added first (``app_io.wrap_saved_model``); the calibration images are then fed as the uint8
pixels they were. ``--output lowres`` cuts the converted file's final resize (``lowres``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from seg2tflite.atomic import private_tempdir
from seg2tflite.calibration.representative import CalibrationSet
from seg2tflite.converters.app_io import AppIO, to_pixels, wrap_saved_model
from seg2tflite.converters.int8_build import build_full_int8
from seg2tflite.converters.lowres import cut_final_resize
from seg2tflite.converters.matmul_layout import drop_matmul_transposes
from seg2tflite.converters.onnx_to_tf import ConversionError
from seg2tflite.converters.stages import CALIBRATED_VARIANTS, VARIANTS
from seg2tflite.converters.xnnpack_int8 import xnnpack_int8_forms
from seg2tflite.quiet import muted_stderr


def build_tflite(
    saved_model: str | Path,
    variant: str,
    calibration: CalibrationSet | None = None,
    int8_io: str = "int8",
    progress: bool = False,
    per_channel: bool = True,
    app: AppIO | None = None,
    int8_ranges: str = "minmax",
    int8_bias_correction: bool = False,
) -> bytes:
    """The .tflite flatbuffer of ``variant`` built from ``saved_model`` (``per_channel=False``: one
    weight scale per tensor, for the calibration study; ``app``: the app's input/output ends;
    ``int8_ranges``: how full int8 chooses its activation ranges; ``int8_bias_correction``: its
    weights' mean error taken out of the biases)."""
    return build_variant(
        saved_model, variant, calibration, int8_io, progress, per_channel, app, int8_ranges, int8_bias_correction
    )[0]


def build_variant(
    saved_model: str | Path,
    variant: str,
    calibration: CalibrationSet | None = None,
    int8_io: str = "int8",
    progress: bool = False,
    per_channel: bool = True,
    app: AppIO | None = None,
    int8_ranges: str = "minmax",
    int8_bias_correction: bool = False,
) -> tuple[bytes, dict | None]:
    """``build_tflite``'s file and, for full int8, the record of how its ranges were chosen."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    with private_tempdir("app") as work:
        representative = None
        if app is not None and app.wrapped:
            saved_model = wrap_saved_model(saved_model, work / "saved_model", app)
            if calibration is not None and variant in CALIBRATED_VARIANTS:
                floats = calibration.representative_dataset(progress)

                def representative():  # the pixels the normalised images were made from
                    for (x,) in floats():
                        yield [to_pixels(x, app.mean, app.std, channel_axis=-1)] if app.input == "uint8" else [x]

        if variant == "full_int8":
            if calibration is None:
                raise ValueError(f"{variant} needs calibration images")
            with _converter_errors(variant):
                built = build_full_int8(
                    saved_model, representative or calibration.representative_dataset(progress), int8_ranges, int8_io,
                    per_channel, finish=lambda content: xnnpack_int8_forms(drop_matmul_transposes(content)[0])[0],
                    bias_correction=int8_bias_correction,
                )  # fmt: skip
            content, record = built.content, built.record()
        else:
            content, record = _convert(saved_model, variant, calibration, progress, per_channel, representative), None
            content = drop_matmul_transposes(content)[0]
    return (cut_final_resize(content)[0] if app is not None and app.output == "lowres" else content), record


def _convert(saved_model, variant, calibration, progress, per_channel, representative=None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_disable_per_channel = not per_channel
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant in CALIBRATED_VARIANTS:
        if calibration is None:
            raise ValueError(f"{variant} needs calibration images")
        converter.representative_dataset = representative or calibration.representative_dataset(progress)
    if variant == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    with _converter_errors(variant), muted_stderr():  # the converter logs through absl, line by line
        return converter.convert()


@contextlib.contextmanager
def _converter_errors(variant: str):
    """The TF converter's exceptions as one ``ConversionError`` line."""
    try:
        yield
    except ConversionError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"TFLite converter failed on the {variant} variant: {first[:400]} "
            "(ops outside the TFLite builtins are not allowed; fix the deploy form)"
        ) from None
