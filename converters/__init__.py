"""The conversion chain PyTorch -> ONNX -> TensorFlow -> TFLite, with parity measured at every step.

Entry points: ``convert_registered`` (a registry model name), ``convert_model`` (any PyTorch
segmentation module), ``convert_onnx`` (an existing ONNX file); settings and gates in
``ConvertConfig``; runners for every runtime in ``converters.runtimes``.

Names are imported on first use, so ``import converters.runtimes`` (an evaluation or benchmark
process) does not pay for PyTorch and the whole pipeline.
"""

from importlib import import_module

_EXPORTS = {
    "VARIANTS": "converters.config",
    "ConvertConfig": "converters.config",
    "ConversionError": "converters.onnx_to_tf",
    "OpsError": "converters.ops",
    "ParityError": "converters.parity",
    "ConvertResult": "converters.pipeline",
    "convert_model": "converters.pipeline",
    "convert_onnx": "converters.pipeline",
    "convert_registered": "converters.pipeline",
    "resolve_onnx_input_size": "converters.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
