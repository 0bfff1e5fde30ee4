"""The representative dataset: calibration images preprocessed exactly as for evaluation.

``build_calibration_set`` draws and preprocesses the images (checked: enough of them, three
channels, finite, not all one value); ``CalibrationSet.representative_dataset`` is the generator
``tf.lite.TFLiteConverter.representative_dataset`` wants (NHWC, batch 1, as onnx2tf lays out
the SavedModel input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from seg2tflite.calibration.select import STRATEGIES, select_calibration, select_random
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError, setting


@dataclass(frozen=True)
class CalibrationSet:
    images: np.ndarray  # (N, 3, H, W) float32, normalised like evaluation inputs
    names: tuple[str, ...]  # dataset item names, recorded in the manifest
    indices: tuple[int, ...]
    source: str  # "dataset:split" or a file name

    def __len__(self) -> int:
        return len(self.images)

    def nhwc(self) -> np.ndarray:
        return np.ascontiguousarray(self.images.transpose(0, 2, 3, 1))

    def representative_dataset(self, progress: bool = False) -> Callable[[], Iterator[list[np.ndarray]]]:
        images = self.nhwc()

        def gen() -> Iterator[list[np.ndarray]]:
            for x in tqdm(images, desc="calibrating", leave=False, disable=not progress):
                yield [x[None]]

        return gen


def dataset_source(dataset: SegmentationDataset) -> str:
    return f"{dataset.info.name}:{dataset.split}"


def check_disjoint(calib: SegmentationDataset, evaluate: SegmentationDataset) -> None:
    """Calibrating and evaluating on the same images would flatter the quantized models."""
    if calib is evaluate or dataset_source(calib) == dataset_source(evaluate):
        raise UserError(
            f"{setting('calib_data')}: {dataset_source(calib)} is also the evaluation split; "
            "calibrate on another split (e.g. train) than the one you evaluate on"
        )


def check_images(images: np.ndarray, source: str, min_size: int) -> None:
    """Refuse calibration data that cannot calibrate anything."""
    if images.size == 0 or len(images) == 0:
        raise UserError(f"{source}: calibration data is empty; give a split or file with images")
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"{source}: calibration images have shape {tuple(images.shape[1:])}; expected (3, H, W) RGB")
    if len(images) < min_size:
        raise UserError(
            f"{source}: only {len(images)} calibration images, fewer than the minimum {min_size}; "
            "give more images or lower the minimum"
        )
    if not np.isfinite(images).all():
        raise UserError(f"{source}: calibration images contain NaN or Inf; check the data")
    flat = images.reshape(len(images), images.shape[1], -1)
    if (flat.max(axis=2) == flat.min(axis=2)).all():
        raise UserError(
            f"{source}: every calibration image is one value per channel (blank); "
            "calibrate on real images, or the int8 ranges describe nothing"
        )


def build_calibration_set(
    dataset: SegmentationDataset,
    preprocess: Preprocess,
    size: int = 200,
    seed: int = 0,
    min_size: int = 8,
    exclude: tuple[int, ...] | list[int] = (),
    progress: bool = True,
    strategy: str = "stratified",
) -> CalibrationSet:
    """Select ``size`` images (seeded; ``strategy`` "stratified" or "random", see ``select``) and
    preprocess them as evaluation does."""
    source = dataset_source(dataset)
    if len(dataset) == 0:
        raise UserError(f"{source}: calibration data is empty; give a split with images")
    if len(dataset) - len(set(exclude)) < min_size:
        raise UserError(
            f"{source}: only {len(dataset) - len(set(exclude))} calibration images available, fewer than the "
            f"minimum {min_size}; give a larger split"
        )
    if strategy not in STRATEGIES:
        raise UserError(f"{setting('strategy')}: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "random":
        indices = select_random(dataset, size, seed=seed, exclude=exclude)
    else:
        indices = select_calibration(dataset, size, seed=seed, exclude=exclude, progress=progress)
    images = []
    for i in tqdm(indices, desc="calibration images", disable=not progress, leave=False):
        image = np.asarray(dataset[i][0])
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{source}: image {dataset.item_name(i)} has shape {image.shape}; expected (H, W, 3) RGB")
        images.append(preprocess.image(image))
    array = np.stack(images).astype(np.float32)
    check_images(array, source, min_size)
    return CalibrationSet(array, tuple(dataset.item_name(i) for i in indices), tuple(indices), source)


def calibration_from_array(images: np.ndarray, source: str, min_size: int = 8) -> CalibrationSet:
    """Calibration images already preprocessed, (N, 3, H, W) float32 (e.g. from an .npy file)."""
    images = np.asarray(images, dtype=np.float32)
    check_images(images, source, min_size)
    names = tuple(f"{source}[{i}]" for i in range(len(images)))
    return CalibrationSet(images, names, tuple(range(len(images))), source)
