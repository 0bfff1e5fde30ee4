"""The one comparison engine: an artifact's logits against a reference's.

``LogitComparison`` takes (reference, output) logit pairs one image at a time and accumulates max
and mean absolute drift, cosine similarity, argmax pixel agreement and the mIoU of the output's
argmax against the reference's. Given the reference's logit range up front, it also counts the
outliers (logit values drifting more than a fraction of that range) and the agreement on decisive
pixels (those whose top-two reference logits are further apart than a margin of the range). The
conversion gates (``parity``), ``evaluate.compare_artifacts`` and the tests all read their
figures from it.
"""

from __future__ import annotations

import math

import numpy as np

from seg2tflite.metrics import ConfusionMatrix


class LogitComparison:
    """Streaming comparison of one artifact's logits with a reference's, image after image."""

    def __init__(
        self,
        num_classes: int,
        logit_range: float | None = None,
        outlier_drifts: tuple[float, ...] = (1e-3, 1e-2),
        tie_margin: float = 0.01,
    ):
        self.fixed_range = logit_range  # what outliers and decisive pixels are measured against
        self.outlier_drifts = tuple(outlier_drifts)
        self.tie_margin = tie_margin
        self.outliers = dict.fromkeys(self.outlier_drifts, 0)
        self.decisive = self.decisive_agree = 0
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
        same = ref_arg == out_arg
        self.agree += int(same.sum())
        self.pixels += ref_arg.size
        self.matrix.update(out_arg, ref_arg)
        if self.fixed_range is not None:
            for fraction in self.outlier_drifts:  # NaN/Inf drift counts as an outlier
                self.outliers[fraction] += int((~(diff <= fraction * self.fixed_range)).sum())
            decisive = top_two_gap(ref) > self.tie_margin * self.fixed_range
            self.decisive += int(decisive.sum())
            self.decisive_agree += int((same & decisive).sum())

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
            **self._range_figures(),
        }

    def _range_figures(self) -> dict:
        if self.fixed_range is None:
            return {}
        return {
            "outlier_share": {f"{f:g}": n / max(self.count, 1) for f, n in self.outliers.items()},
            "decisive_share": self.decisive / max(self.pixels, 1),
            "decisive_agreement": self.decisive_agree / self.decisive if self.decisive else math.nan,
        }


def top_two_gap(logits: np.ndarray) -> np.ndarray:
    """Per pixel of (B, K, H, W) logits: the largest minus the second largest (inf for one class)."""
    if logits.shape[1] < 2:
        return np.full((logits.shape[0], *logits.shape[2:]), np.inf)
    top = np.partition(logits, logits.shape[1] - 2, axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]).astype(np.float64)
