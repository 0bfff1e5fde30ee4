"""Segmentation metrics from a streamed confusion matrix (torchvision-references style).

Rows are ground truth, columns prediction. Pixels whose target is ``ignore_index`` are dropped;
a prediction outside ``0..K-1`` counts as wrong (a miss for the target class, a hit for no
class). IoU of a class is ``TP / (TP + FP + FN)``; a class absent from both the ground truth and
the predictions has no IoU (NaN) and is left out of the mean. All figures are fractions in 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


@dataclass(frozen=True)
class SegMetrics:
    miou: float  # mean IoU over classes present in target or prediction
    per_class_iou: tuple[float, ...]  # NaN where a class is in neither
    pixel_accuracy: float  # correct / counted pixels
    mean_class_accuracy: float  # mean over classes present in the target of correct / class pixels
    per_class_accuracy: tuple[float, ...]  # NaN where a class is not in the target
    num_pixels: int  # pixels counted (target not ignore)

    def as_dict(self, class_names: tuple[str, ...] | list[str] | None = None) -> dict:
        """JSON-ready: NaN becomes ``None``; per-class values keyed by name when names are given."""

        def clean(v: float):
            return None if math.isnan(v) else float(v)

        def per_class(values):
            if class_names is None:
                return [clean(v) for v in values]
            if len(class_names) != len(values):
                raise ValueError(f"{len(class_names)} class names for {len(values)} classes")
            return {name: clean(v) for name, v in zip(class_names, values)}

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_class_accuracy": clean(self.mean_class_accuracy),
            "num_pixels": self.num_pixels,
            "per_class_iou": per_class(self.per_class_iou),
            "per_class_accuracy": per_class(self.per_class_accuracy),
        }


class ConfusionMatrix:
    """Accumulates ``mat[target, prediction]`` pixel counts over any number of ``update`` calls."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.out_of_range = np.zeros(self.num_classes, np.int64)  # per target class: predicted outside 0..K-1

    def update(self, pred, target) -> None:
        """Add a batch: ``pred`` and ``target`` integer arrays (numpy or torch) of the same shape."""
        pred, target = _to_numpy(pred), _to_numpy(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
        if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(target.dtype, np.integer)):
            raise TypeError(
                f"expected integer class indices, got {pred.dtype} and {target.dtype} (take the argmax of logits first)"
            )
        k = self.num_classes
        target = target.reshape(-1).astype(np.int64)
        pred = pred.reshape(-1).astype(np.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        bad = (target < 0) | (target >= k)
        if bad.any():
            raise ValueError(f"target holds label {int(target[bad][0])}, outside 0..{k - 1} and not ignore ({self.ignore_index})")
        valid = (pred >= 0) & (pred < k)
        self.mat += np.bincount(target[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
        self.out_of_range += np.bincount(target[~valid], minlength=k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another process); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.mat += other.mat
        self.out_of_range += other.out_of_range
        return self

    def reset(self) -> None:
        self.mat[:] = 0
        self.out_of_range[:] = 0

    def compute(self) -> SegMetrics:
        tp = np.diag(self.mat).astype(np.float64)
        gt = self.mat.sum(axis=1) + self.out_of_range  # pixels of each class in the target
        predicted = self.mat.sum(axis=0)  # pixels predicted as each class
        union = gt + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt > 0, tp / gt, np.nan)
        total = int(gt.sum())
        return SegMetrics(
            miou=_nanmean(iou),
            per_class_iou=tuple(float(v) for v in iou),
            pixel_accuracy=float(tp.sum() / total) if total else math.nan,
            mean_class_accuracy=_nanmean(class_acc),
            per_class_accuracy=tuple(float(v) for v in class_acc),
            num_pixels=total,
        )

    def __repr__(self) -> str:
        m = self.compute()
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={m.num_pixels}, miou={m.miou:.4f})"
