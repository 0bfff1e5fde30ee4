"""Class weights for the training loss: median frequency balancing.

SegNet's paper (Badrinarayanan et al., arXiv 1511.00561, section 3.2, after Eigen and Fergus,
arXiv 1411.4734) weighs each class's cross-entropy by ``median_freq / freq(c)``, where ``freq(c)``
is the class's pixels over the pixels of the training images that hold it: rare classes count
more, the dominant background less. Without it SegNet-VGG16, trained from scratch for a few hundred
steps, can settle on the background everywhere.
"""

from __future__ import annotations

import numpy as np

CLASS_WEIGHTINGS = ("median_frequency",)  # ``TrainConfig.class_weighting``; None: every class weighs 1


def median_frequency_weights(masks, num_classes: int) -> np.ndarray:
    """One weight per class from ``masks`` (label arrays; labels >= ``num_classes`` are ignored);
    a class absent from every mask weighs 1."""
    pixels = np.zeros(num_classes)
    pixels_of_images_holding = np.zeros(num_classes)
    for mask in masks:
        labels = np.asarray(mask).ravel()
        labels = labels[labels < num_classes]
        counts = np.bincount(labels, minlength=num_classes)
        pixels += counts
        pixels_of_images_holding += (counts > 0) * labels.size
    seen = pixels > 0
    if not seen.any():
        return np.ones(num_classes)
    frequency = pixels / np.maximum(pixels_of_images_holding, 1)
    return np.where(seen, np.median(frequency[seen]) / np.where(seen, frequency, 1), 1.0)
