"""Calibration data for the quantized TFLite models: which images, and the representative dataset."""

if __name__ != "seg2tflite.calibration":  # the checkout's root on sys.path would load this folder a second time
    raise ImportError(
        f"import seg2tflite.calibration, not {__name__}: the folders at the repository's top install under seg2tflite"
    )

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
