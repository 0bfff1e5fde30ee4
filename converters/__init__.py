"""The conversion chain PyTorch -> ONNX -> TensorFlow -> TFLite, with parity measured at every step.

Entry points: ``convert_registered`` (a registry model name), ``convert_model`` (any PyTorch
segmentation module), ``convert_onnx`` (an existing ONNX file); settings and gates in
``ConvertConfig``; runners for every runtime in ``converters.runtimes``.
"""

from converters.config import VARIANTS, ConvertConfig
from converters.onnx_to_tf import ConversionError
from converters.ops import OpsError
from converters.parity import ParityError
from converters.pipeline import ConvertResult, convert_model, convert_onnx, convert_registered, resolve_onnx_input_size

__all__ = [
    "VARIANTS",
    "ConversionError",
    "ConvertConfig",
    "ConvertResult",
    "OpsError",
    "ParityError",
    "convert_model",
    "convert_onnx",
    "convert_registered",
    "resolve_onnx_input_size",
]
