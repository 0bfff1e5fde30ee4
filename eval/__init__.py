"""Evaluation: segmentation metrics (and, beside them, the evaluation loops)."""

from seg2tflite.metrics import ConfusionMatrix, SegMetrics

__all__ = ["ConfusionMatrix", "SegMetrics"]
