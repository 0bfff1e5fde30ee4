"""The conversion chain PyTorch -> ONNX -> TensorFlow -> TFLite, with parity measured at every step.

Entry points: ``convert_registered`` (a registry model name), ``convert_model`` (any PyTorch
segmentation module), ``convert_onnx`` (an existing ONNX file); settings and gates in
``ConvertConfig``; runners for every runtime in ``seg2tflite.converters.runtimes``.

Names are imported on first use, so ``import seg2tflite.converters.runtimes`` (an evaluation or benchmark
process) does not pay for PyTorch and the whole pipeline.
"""

from importlib import import_module

_EXPORTS = {
    "VARIANTS": "seg2tflite.converters.config",
    "ConvertConfig": "seg2tflite.converters.config",
    "ConversionError": "seg2tflite.converters.onnx_to_tf",
    "OpsError": "seg2tflite.converters.ops",
    "ParityError": "seg2tflite.converters.parity",
    "ConvertResult": "seg2tflite.converters.chain",
    "convert_model": "seg2tflite.converters.pipeline",
    "convert_onnx": "seg2tflite.converters.pipeline",
    "convert_registered": "seg2tflite.converters.pipeline",
    "resolve_onnx_input_size": "seg2tflite.converters.checks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
