"""The one preprocessing definition shared by training, calibration and evaluation.

An image (uint8, H x W x 3, RGB) becomes a float32 (3, H, W) tensor resized to the model's input
size, scaled to 0..1 and normalised with the model's mean and std; its mask (class indices,
``IGNORE_INDEX`` for pixels that do not count) is resized with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W) the model sees
    mean: tuple[float, float, float]  # per-channel, on a 0..1 image
    std: tuple[float, float, float]

    @classmethod
    def for_model(cls, model_config, size: tuple[int, int] | None = None) -> Preprocess:
        return cls(tuple(size or model_config.input_size), tuple(model_config.mean), tuple(model_config.std))

    def image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, size[0], size[1]), normalised."""
        h, w = self.size
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = image.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) class indices -> int64 (size[0], size[1]), nearest-neighbour resized."""
        h, w = self.size
        if mask.shape[:2] != (h, w):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
        return mask.astype(np.int64)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.image(image), self.mask(mask)
