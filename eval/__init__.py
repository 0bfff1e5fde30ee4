"""Evaluation: segmentation metrics (and, beside them, the evaluation loops)."""

if __name__ != "seg2tflite.eval":  # the checkout's root on sys.path would load this folder a second time
    raise ImportError(f"import seg2tflite.eval, not {__name__}: the folders at the repository's top install under seg2tflite")

from seg2tflite.metrics import ConfusionMatrix, SegMetrics

__all__ = ["ConfusionMatrix", "SegMetrics"]
