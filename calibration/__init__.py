"""Calibration data for the quantized TFLite models: which images, and the representative dataset."""

from seg2tflite.calibration.representative import (
    CalibrationSet,
    build_calibration_set,
    calibration_from_array,
    check_disjoint,
    check_images,
    dataset_source,
)
from seg2tflite.calibration.select import class_histogram, select_calibration

__all__ = [
    "CalibrationSet",
    "build_calibration_set",
    "calibration_from_array",
    "check_disjoint",
    "check_images",
    "class_histogram",
    "dataset_source",
    "select_calibration",
]
