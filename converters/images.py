"""The real images a conversion uses: the calibration set, and the parity images every artifact is compared on.

Parity images come from ``parity_data`` when given, else from the calibration split minus the
images calibration took, so no artifact is judged on the images it was calibrated with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seg2tflite.calibration.representative import CalibrationSet, build_calibration_set, check_disjoint, dataset_source
from seg2tflite.converters.config import ConvertConfig
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError, setting


@dataclass
class ParityImages:
    images: np.ndarray  # (N, 3, H, W) float32, preprocessed
    masks: np.ndarray | None  # (N, H, W) int64
    names: list[str]
    source: str


def resolve_data(calib_data, parity_data, config: ConvertConfig):
    """The two data arguments of ``convert_model`` as datasets: a data spec string (``"synthetic"``,
    ``"folder:PATH"``) is loaded (calibration from ``config.calib_split``, parity from ``val``), a
    (N, 3, H, W) float32 array of preprocessed images becomes the calibration set."""
    from seg2tflite.calibration.representative import calibration_from_array
    from seg2tflite.data import load_dataset

    if isinstance(calib_data, str):
        calib_data = load_dataset(calib_data, config.calib_split, option="calib_data")
    elif isinstance(calib_data, np.ndarray):
        calib_data = calibration_from_array(calib_data, "calib_data array", min_size=config.calib_min)
    if isinstance(parity_data, str):
        parity_data = load_dataset(parity_data, "val", option="parity_data")
    elif parity_data is not None and not isinstance(parity_data, SegmentationDataset):
        raise UserError(f"parity_data: a {type(parity_data).__name__}; pass a dataset split, a data spec string, or None")
    return calib_data, parity_data


def parity_images(
    calib_data,
    parity_data: SegmentationDataset | None,
    calib: CalibrationSet | None,
    preprocess: Preprocess,
    config: ConvertConfig,
) -> ParityImages:
    """Real images for parity: from ``parity_data``, else the calibration split minus the calibration images."""
    if parity_data is not None:
        if isinstance(calib_data, SegmentationDataset):
            check_disjoint(calib_data, parity_data)
        dataset, exclude = parity_data, set()
    elif isinstance(calib_data, SegmentationDataset):
        dataset, exclude = calib_data, set(calib.indices if calib else ())
    else:  # pre-built calibration array, no masks
        n = min(config.parity_images, len(calib_data))
        return ParityImages(calib_data.images[:n], None, list(calib_data.names[:n]), calib_data.source)
    rng = np.random.default_rng(config.calib_seed + 1)
    candidates = [int(i) for i in rng.permutation(len(dataset)) if int(i) not in exclude]
    if not candidates:  # tiny split: every image went into calibration
        candidates = [int(i) for i in rng.permutation(len(dataset))]
    chosen = candidates[: config.parity_images]
    images, masks = [], []
    for i in chosen:
        image, mask = dataset[i]
        x, y = preprocess(np.asarray(image), np.asarray(mask))
        images.append(x)
        masks.append(y)
    return ParityImages(
        np.stack(images).astype(np.float32), np.stack(masks), [dataset.item_name(i) for i in chosen], dataset_source(dataset)
    )


def calibration_set(calib_data, preprocess: Preprocess, config: ConvertConfig, progress: bool) -> CalibrationSet:
    if isinstance(calib_data, CalibrationSet):
        if calib_data.images.shape[2:] != tuple(config.input_size):
            raise UserError(
                f"{calib_data.source}: calibration images are {calib_data.images.shape[2:]}, the model input is "
                f"{tuple(config.input_size)}; preprocess them at {setting('input_size', python='config.input_size')}"
            )
        return calib_data
    if not isinstance(calib_data, SegmentationDataset):
        raise UserError(
            f"{setting('calib_data')}: a {type(calib_data).__name__}; pass a dataset split, a data spec string, "
            "a CalibrationSet or a (N, 3, H, W) float32 array of preprocessed images"
        )
    return build_calibration_set(
        calib_data, preprocess, size=config.calib_size, seed=config.calib_seed, min_size=config.calib_min, progress=progress
    )


def conversion_memory(activations, calibrated: bool, calib_size: int, parity_images: int):
    """``need(h, w)``: a lower bound of the bytes a conversion at (h, w) holds at once: the
    calibration and parity images as float32 (plus the NHWC copy of the parity images onnx2tf
    checks its layouts on), and ``activations(h, w)`` (every layer's output, which onnx2tf's
    shape inference and the TFLite calibrator keep; None: unknown, counted as nothing)."""

    def need(h: int, w: int) -> float:
        image = 3 * h * w * 4
        held = (calib_size if calibrated else 0) + 2 * parity_images
        return held * image + (activations(h, w) or 0)

    return need
