"""seg2tflite: PyTorch segmentation models to TFLite, with the accuracy cost of every step measured.

Each folder at the repository's top is one floor, installed under this one namespace; a module
imports its own floor and the floors below it, never above:

- ``seg2tflite`` (this folder): errors, atomic writes, records, data, metrics, memory;
- ``seg2tflite.models``: the model registry;
- ``seg2tflite.calibration``: representative images for quantization;
- ``seg2tflite.converters``: PyTorch -> ONNX -> TensorFlow -> TFLite, with parity gates;
- ``seg2tflite.eval``: mIoU, latency, reports;
- ``seg2tflite.app``: the command line, the demo, training and compression.
"""

__version__ = "0.1.0"
