"""seg2tflite: PyTorch segmentation models to TFLite, with the accuracy cost of every step measured.

This package holds the command line, the datasets and the training loop; the models, converters,
calibration and evaluation live in the top-level packages of the same names.
"""

__version__ = "0.1.0"
