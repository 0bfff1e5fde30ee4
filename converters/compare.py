"""The one comparison engine: an artifact's logits against a reference's.

``LogitComparison`` takes (reference, output) logit pairs one image at a time and accumulates max
and mean absolute drift, cosine similarity, argmax pixel agreement and the mIoU of the output's
argmax against the reference's. The conversion gates (``parity``), ``evaluate.compare_artifacts``
and the tests all read their figures from it.
"""

from __future__ import annotations

import math

import numpy as np

from seg2tflite.metrics import ConfusionMatrix


class LogitComparison:
    """Streaming comparison of one artifact's logits with a reference's, image after image."""

    def __init__(self, num_classes: int):
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.dot = self.ref_sq = self.out_sq = 0.0
        self.agree = self.pixels = 0
        self.images = 0
        self.lo, self.hi = math.inf, -math.inf  # the reference's logit range so far
        self.matrix = ConfusionMatrix(num_classes, ignore_index=-1)

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        """Add one batch of (B, K, H, W) logits: the reference's and the artifact's."""
        if ref.shape != out.shape:
            raise ValueError(f"logit shapes differ: {out.shape} vs the reference's {ref.shape}")
        self.images += len(ref)
        self.lo, self.hi = min(self.lo, float(np.nanmin(ref))), max(self.hi, float(np.nanmax(ref)))
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(out64 - ref64)
        finite = np.isfinite(diff)
        self.max_abs = max(self.max_abs, float(diff.max()) if finite.all() else math.inf)
        self.sum_abs += float(diff[finite].sum())
        self.count += diff.size
        self.dot += float((ref64 * out64).sum())
        self.ref_sq += float((ref64 * ref64).sum())
        self.out_sq += float((out64 * out64).sum())
        ref_arg, out_arg = ref.argmax(1), out.argmax(1)
        self.agree += int((ref_arg == out_arg).sum())
        self.pixels += ref_arg.size
        self.matrix.update(out_arg, ref_arg)

    @property
    def logit_range(self) -> float:
        return self.hi - self.lo

    def result(self, logit_range: float | None = None) -> dict:
        """The figures; drift is read against ``logit_range`` (default: this reference's own)."""
        logit_range = self.logit_range if logit_range is None else logit_range
        denom = math.sqrt(self.ref_sq * self.out_sq)
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / max(self.count, 1),
            "max_abs_over_range": self.max_abs / logit_range if logit_range > 0 else math.inf,
            "cosine": self.dot / denom if denom > 0 else math.nan,
            "argmax_agreement": self.agree / max(self.pixels, 1),
            "miou_vs_reference": self.matrix.compute().miou,
        }
