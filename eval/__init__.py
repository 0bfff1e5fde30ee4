"""Evaluation: segmentation metrics (and, beside them, the evaluation loops)."""

from eval.metrics import ConfusionMatrix, SegMetrics

__all__ = ["ConfusionMatrix", "SegMetrics"]
