"""The conversion chain PyTorch -> ONNX -> TensorFlow -> TFLite, with parity measured at every step.

Entry points: ``convert_registered`` (a registry model name), ``convert_model`` (any PyTorch
segmentation module), ``convert_onnx`` (an existing ONNX file); settings and gates in
``ConvertConfig``; runners for every runtime in ``seg2tflite.converters.runtimes``.

Names are imported on first use, so ``import seg2tflite.converters.runtimes`` (an evaluation or benchmark
process) does not pay for PyTorch and the whole pipeline.
"""

if __name__ != "seg2tflite.converters":  # the checkout's root on sys.path would load this folder a second time
    raise ImportError(
        f"import seg2tflite.converters, not {__name__}: the folders at the repository's top install under seg2tflite"
    )

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from seg2tflite.converters.chain import ConvertResult as ConvertResult
    from seg2tflite.converters.checks import resolve_onnx_input_size as resolve_onnx_input_size
    from seg2tflite.converters.config import VARIANTS as VARIANTS
    from seg2tflite.converters.config import ConvertConfig as ConvertConfig
    from seg2tflite.converters.onnx_to_tf import ConversionError as ConversionError
    from seg2tflite.converters.ops import OpsError as OpsError
    from seg2tflite.converters.parity import ParityError as ParityError
    from seg2tflite.converters.pipeline import convert_model as convert_model
    from seg2tflite.converters.pipeline import convert_onnx as convert_onnx
    from seg2tflite.converters.pipeline import convert_registered as convert_registered

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


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelled name is an error there, not Any

    def __getattr__(name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module 'seg2tflite.converters' has no attribute {name!r}")
        return getattr(import_module(_EXPORTS[name]), name)
