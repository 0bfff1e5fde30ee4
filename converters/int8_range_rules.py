"""The rules that choose one int8 range from a tensor's values: pure NumPy, no converter.

A tensor's values over the calibration images are kept as a ``Histogram`` (counts on fixed
edges, exact extremes, zeros apart; for the logits an ARG_MAX reads, each position's winner and
runner-up; for a graph output of class logits, sampled positions); ``choose_range`` turns it into
the (min, max) a method gives it (``int8_ranges`` calibrates, collects and writes them).

Methods (``RANGE_METHODS``):
- ``minmax``: the observed min/max (the converter's choice);
- ``percentile``: the 0.01st and 99.99th percentiles (AIMET's setting for DeepLabV3+ Xception);
- ``mse``: the range whose expected int8 error (rounding inside, clipping outside) over the
  histogram is smallest, as PT2E's HistogramObserver and AIMET's TF-Enhanced search;
- ``auto``: every method's file built from three quarters of the images and scored on the
  remaining quarter (``int8_build``); the best method's ranges are then taken from all images.

A tensor read only by ARG_MAX (the logits of a file that returns the class map) matters only
through its argmax, and int8 logits that round to one level tie (ARG_MAX then takes the lower
class). Its range (``percentile``, ``mse``) is narrowed to what decides the argmax: from just
below the smallest winning value of a position to just above the largest runner-up, over the
calibration images: clipping values outside it changes no position's argmax there.

A graph output that holds class logits (NHWC, more than one class) is read through its softmax
and argmax, not value by value: its range (``percentile``, ``mse``) is the one whose int8 grid
changes the softmax least (mean KL divergence from the float softmax over positions sampled from
the calibration images). Losers far below a position's winner may clip at no cost; near-equal
top logits get the finer grid that keeps them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RANGE_METHODS = ("minmax", "percentile", "mse", "auto")
CANDIDATES = ("minmax", "percentile", "mse")  # what ``auto`` chooses from
RULES_REVISION = 2  # raised when a rule changes the range a method chooses: full-int8 files built before are rebuilt
PERCENTILE = 99.99
BINS = 2048
LOGIT_ROWS_PER_IMAGE = 1024  # class-logit outputs: positions kept per image for the softmax divergence
LOGIT_ROWS = 32768  # and at most this many searched


def int8_grid(lo: float, hi: float) -> tuple[float, float]:
    """The scale and zero point of the int8 grid over (``lo``, ``hi``), as TFLite's quantizer sets them."""
    scale = (hi - lo) / 255
    return scale, float(np.round(-128 - lo / scale))


def on_int8_grid(values: np.ndarray, scale: float, zero_point: float) -> np.ndarray:
    """``values`` quantized to int8 on that grid and read back."""
    return (np.clip(np.round(values / scale) + zero_point, -128, 127) - zero_point) * scale


@dataclass
class Histogram:
    """One tensor's values over the calibration images: counts on fixed edges, exact extremes, zeros
    counted apart (int8 represents zero exactly, so they cost no rounding error)."""

    lo: float
    hi: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    seen_min: float = np.inf
    seen_max: float = -np.inf
    zeros: int = 0
    top1_min: float = np.inf  # read only by ARG_MAX: the smallest value that wins its position
    top2_max: float = -np.inf  # and the largest runner-up
    logit_rows: list[np.ndarray] = field(default_factory=list)  # a class-logit output: sampled positions' logits

    def add(self, values: np.ndarray) -> None:
        values = values.ravel()
        if not values.size:
            return
        self.seen_min = min(self.seen_min, float(values.min()))
        self.seen_max = max(self.seen_max, float(values.max()))
        self.zeros += int(np.count_nonzero(values == 0))
        width = (self.hi - self.lo) / BINS
        index = np.zeros(values.size, np.int64) if width <= 0 else ((values - self.lo) / width).astype(np.int64)
        self.counts += np.bincount(np.clip(index, 0, BINS - 1), minlength=BINS)

    def add_decisive(self, values: np.ndarray, axis: int) -> None:
        """Track the winners and runners-up of ``values`` along the class ``axis``."""
        if values.shape[axis] < 2:
            return
        top = np.partition(values, -2, axis=axis)  # the runner-up at -2, the winner after it
        self.top1_min = min(self.top1_min, float(np.take(top, -1, axis=axis).min()))
        self.top2_max = max(self.top2_max, float(np.take(top, -2, axis=axis).max()))

    def add_logits(self, values: np.ndarray) -> None:
        """Keep up to ``LOGIT_ROWS_PER_IMAGE`` positions (evenly spaced) of class logits, classes last."""
        rows = values.reshape(-1, values.shape[-1])
        keep = np.linspace(0, len(rows) - 1, min(len(rows), LOGIT_ROWS_PER_IMAGE)).astype(np.int64)
        self.logit_rows.append(rows[keep].astype(np.float32))

    @property
    def decisive(self) -> bool:
        return bool(np.isfinite(self.top1_min) and np.isfinite(self.top2_max))

    @property
    def centres(self) -> np.ndarray:
        return self.lo + (np.arange(BINS) + 0.5) * (self.hi - self.lo) / BINS


def merged(histograms: list[Histogram]) -> Histogram:
    """One histogram of several tensors' values (counts moved to common edges by their bin centres)."""
    seen = [h for h in histograms if h.seen_min <= h.seen_max]
    if len(seen) <= 1:
        return seen[0] if seen else histograms[0]
    out = Histogram(min(h.lo for h in seen), max(h.hi for h in seen))
    for h in seen:
        width = (out.hi - out.lo) / BINS
        index = np.zeros(BINS, np.int64) if width <= 0 else ((h.centres - out.lo) / width).astype(np.int64)
        out.counts += np.bincount(np.clip(index, 0, BINS - 1), weights=h.counts, minlength=BINS).astype(np.int64)
        out.seen_min, out.seen_max = min(out.seen_min, h.seen_min), max(out.seen_max, h.seen_max)
        out.top1_min, out.top2_max = min(out.top1_min, h.top1_min), max(out.top2_max, h.top2_max)
        out.zeros += h.zeros
        out.logit_rows += h.logit_rows
    return out


def choose_range(histogram: Histogram, method: str) -> tuple[float, float]:
    """The (min, max) ``method`` gives this tensor; always holds zero, as the int8 grid does."""
    lo, hi = histogram.seen_min, histogram.seen_max
    if not lo <= hi:
        return 0.0, 0.0
    if method in ("percentile", "mse") and histogram.logit_rows:
        lo, hi = _least_divergence_range(np.concatenate(histogram.logit_rows), lo, hi)
    elif method == "percentile" and histogram.counts.sum():
        lo, hi = _percentile(histogram, 100 - PERCENTILE), _percentile(histogram, PERCENTILE)
    elif method == "mse" and histogram.counts.sum():
        lo, hi = _least_error_range(histogram)
    elif method != "minmax" and method not in RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}; choose from {RANGE_METHODS}")
    if method != "minmax" and histogram.decisive:  # one level of margin, so a clipped winner still wins
        low, high = sorted((histogram.top1_min, histogram.top2_max))
        margin = (high - low) / 254
        lo, hi = max(lo, low - margin), min(hi, high + margin)
    lo, hi = max(lo, histogram.seen_min), min(hi, histogram.seen_max)
    return min(lo, 0.0), max(hi, 0.0)


def _percentile(histogram: Histogram, q: float) -> float:
    cumulative = np.cumsum(histogram.counts) / histogram.counts.sum()
    edges = np.linspace(histogram.lo, histogram.hi, BINS + 1)
    i = int(np.searchsorted(cumulative, q / 100))
    return float(edges[min(i + 1, BINS)] if q > 50 else edges[i])


def _least_error_range(histogram: Histogram, candidates: int = 128) -> tuple[float, float]:
    """The (min, max) minimising the expected squared int8 error over the histogram: step^2/12 per
    value inside (exact zeros excepted), the squared distance to the bound per clipped value."""
    c = histogram.counts.astype(np.float64)
    x = histogram.centres
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(c * x**p)]) for p in (0, 1, 2))
    total = s0[-1]
    lo, hi = min(histogram.seen_min, 0.0), max(histogram.seen_max, 0.0)
    # Candidate bounds: from the extremes inwards to the 90% quantile of each side, on the bin edges.
    edges = np.linspace(histogram.lo, histogram.hi, BINS + 1)
    cumulative = s0[1:] / max(total, 1)
    upper_from = int(np.searchsorted(cumulative, 0.90))
    lower_to = int(np.searchsorted(cumulative, 0.10)) + 1
    uppers = np.unique(np.linspace(upper_from, BINS, candidates).astype(int))  # edge indices
    lowers = np.unique(np.linspace(0, lower_to, candidates).astype(int))
    b = np.maximum(edges[uppers], 0.0) if hi > 0 else np.zeros(1)
    a = np.minimum(edges[lowers], 0.0) if lo < 0 else np.zeros(1)
    ub = uppers if hi > 0 else np.array([BINS])
    la = lowers if lo < 0 else np.array([0])
    # Values in bins at or beyond edge index u are clipped to b; below edge index l, to a.
    above = (s2[-1] - s2[ub]) - 2 * b * (s1[-1] - s1[ub]) + b**2 * (s0[-1] - s0[ub])
    below = s2[la] - 2 * a * s1[la] + a**2 * s0[la]
    inside = total - (s0[-1] - s0[ub])[None, :] - s0[la][:, None] - histogram.zeros
    step = (b[None, :] - a[:, None]) / 255
    error = above[None, :] + below[:, None] + np.maximum(inside, 0) * step**2 / 12
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(a[i]), float(b[j])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _least_divergence_range(rows: np.ndarray, lo: float, hi: float, steps: int = 20) -> tuple[float, float]:
    """The (min, max) within (``lo``, ``hi``) whose int8 grid moves the softmax of ``rows``
    (positions x classes) least from the float one (mean KL divergence): a coarse grid of bounds
    from the extremes inwards, then a finer one around its best."""
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), LOGIT_ROWS)).astype(np.int64)].astype(np.float64)
    reference = _log_softmax(rows)
    weights = np.exp(reference)
    lo, hi = min(lo, 0.0), max(hi, 0.0)

    def divergence(f_lo: float, f_hi: float) -> float:
        a, b = lo * f_lo, hi * f_hi
        if b - a <= 0:
            return np.inf
        grid = on_int8_grid(rows, *int8_grid(a, b))
        return float(np.mean(np.sum(weights * (reference - _log_softmax(grid)), axis=1)))

    coarse = np.linspace(1 / steps, 1, steps)  # fractions of the extremes
    _, f_lo, f_hi = min((divergence(a, b), a, b) for a in coarse for b in coarse)
    fine = np.linspace(-1 / steps, 1 / steps, 9)
    candidates = [(a, b) for a in f_lo + fine for b in f_hi + fine if 0 < a <= 1 and 0 < b <= 1]
    _, f_lo, f_hi = min((divergence(a, b), a, b) for a, b in candidates)
    return lo * f_lo, hi * f_hi
