"""Which images calibrate the quantized models: seeded, stratified so rare classes are present.

Greedy first: while some class seen in the candidate pool has no picked pixels yet, pick the
image with the most pixels of the class with the fewest picked pixels so far. Then fill the rest
at random. Everything is drawn from a seeded permutation, so the same seed gives the same list.
``select_random`` is the plain seeded draw the calibration study compares against.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from seg2tflite.data.base import SegmentationDataset
from seg2tflite.errors import UserError, setting

STRATEGIES = ("stratified", "random")
POOL_FACTOR = 4  # class statistics are read for at most POOL_FACTOR * size candidate images


def class_histogram(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel count per class; ignore_index and out-of-range values are not counted."""
    values = mask.reshape(-1).astype(np.int64)
    values = values[(values >= 0) & (values < num_classes)]
    return np.bincount(values, minlength=num_classes)[:num_classes]


def select_calibration(
    dataset: SegmentationDataset,
    size: int,
    seed: int = 0,
    exclude: tuple[int, ...] | list[int] = (),
    progress: bool = True,
) -> list[int]:
    """Indices of up to ``size`` images of ``dataset``, rare classes first, then random."""
    rng = np.random.default_rng(seed)
    excluded = set(int(i) for i in exclude)
    pool = [int(i) for i in rng.permutation(len(dataset)) if int(i) not in excluded]
    if not pool:
        raise UserError(
            f"calibration data {_describe(dataset)}: no images to draw from; point {setting('calib_data')} at a split with images"
        )
    pool = pool[: max(size, POOL_FACTOR * size)]
    num_classes = dataset.info.num_classes
    hist = np.stack(
        [
            class_histogram(dataset[i][1], num_classes)
            for i in tqdm(pool, desc="calibration classes", disable=not progress, leave=False)
        ]
    )
    picked: list[int] = []
    taken = np.zeros(len(pool), bool)
    picked_pixels = np.zeros(num_classes, np.int64)
    while len(picked) < size:
        remaining = hist[~taken].sum(0) if (~taken).any() else np.zeros(num_classes, np.int64)
        uncovered = np.flatnonzero((picked_pixels == 0) & (remaining > 0))
        if uncovered.size == 0:
            break
        rarest = uncovered[np.argmin(remaining[uncovered])]  # fewest pixels available: rarest first
        scores = np.where(taken, -1, hist[:, rarest])
        best = int(np.argmax(scores))  # ties go to the earliest in the seeded order
        taken[best] = True
        picked.append(pool[best])
        picked_pixels += hist[best]
    for j in np.flatnonzero(~taken)[: size - len(picked)]:
        picked.append(pool[int(j)])
    return picked


def select_random(dataset: SegmentationDataset, size: int, seed: int = 0, exclude: tuple[int, ...] | list[int] = ()) -> list[int]:
    """Indices of up to ``size`` images drawn uniformly at random (seeded), ignoring the classes."""
    excluded = set(int(i) for i in exclude)
    pool = [int(i) for i in np.random.default_rng(seed).permutation(len(dataset)) if int(i) not in excluded]
    if not pool:
        raise UserError(
            f"calibration data {_describe(dataset)}: no images to draw from; point {setting('calib_data')} at a split with images"
        )
    return pool[:size]


def _describe(dataset: SegmentationDataset) -> str:
    return f"{getattr(dataset.info, 'name', '?')}:{getattr(dataset, 'split', '?')}"
