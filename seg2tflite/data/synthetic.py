"""A built-in synthetic segmentation dataset, generated on the fly and deterministic by seed.

Eight classes: background and seven shapes (disc, rectangle, triangle, ring, line, cross, star).
It is built so that a small model has to learn shape and texture, and so that quantization
error shows up rather than hiding behind easy margins:

- every class draws its colours from one wide distribution pulled towards a per-class tint by
  ``colour_hint`` (default 0.6), and textures mix in a second, random colour: colour is a hint,
  and a colour-only classifier names about a third of object pixels right (chance 1/7);
- each object wears a texture (flat, stripes, checker, dots, gradient, speckle): its class's
  preferred one with probability ``texture_prob``, any one otherwise, with random
  period, phase, orientation and contrast (some textures are fine, 3-4 px periods);
- 2-6 objects per image at log-uniform scales (radius 3 px to 45 % of the image side), random rotation and
  position (partly out of frame); later objects occlude earlier ones and the mask follows;
  lines are 1-3 px wide; objects cover about 15 % of the pixels;
- backgrounds are gradients with low-frequency noise, sometimes a faint texture, plus soft blobs
  of clutter that stay background;
- per image: contrast, brightness and per-channel gain jitter, sometimes a slight blur, and
  Gaussian noise.

Item ``i`` of a split is a pure function of ``(seed, split, i)``, so any item can be made alone
and the splits never share an image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.errors import UserError

CLASS_NAMES = ("background", "disc", "rectangle", "triangle", "ring", "line", "cross", "star")
PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25),
    (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
)  # fmt: skip
SYNTHETIC_INFO = DatasetInfo("synthetic", CLASS_NAMES, PALETTE)
BACKGROUND, DISC, RECTANGLE, TRIANGLE, RING, LINE, CROSS, STAR = range(8)
FLAT, STRIPES, CHECKER, DOTS, GRADIENT, SPECKLE = range(6)
NUM_TEXTURES = 6
PREFERRED_TEXTURE = {DISC: STRIPES, RECTANGLE: CHECKER, TRIANGLE: DOTS, RING: GRADIENT, LINE: FLAT, CROSS: SPECKLE, STAR: STRIPES}
# Each class's colours are pulled towards a tint by ``colour_hint``: a hint, never an answer.
_TINT = np.array([(128, 128, 128), (200, 90, 90), (90, 190, 90), (200, 190, 80), (80, 120, 200), (200, 140, 70), (150, 80, 190), (90, 200, 200)], np.float32)  # fmt: skip
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MIN_VISIBLE_PIXELS = 6  # an object counts as present when at least this much of it shows
RENDER_BYTES_PER_PIXEL = 64  # peak memory of ``render`` (tracemalloc: 62 bytes a pixel at 256x256 and 1024x1024)


@dataclass(frozen=True)
class SyntheticConfig:
    num_train: int = 1000  # images in the train split
    num_val: int = 200  # images in the val split
    num_test: int = 200  # images in the test split
    image_size: tuple[int, int] = (128, 128)  # (H, W)
    seed: int = 0  # the whole dataset is a function of this
    min_objects: int = 2  # at least this many objects stay visible in every image
    max_objects: int = 6  # objects drawn per image (more only to meet min_objects)
    texture_prob: float = 0.7  # chance an object wears its class's texture (else any of the six)
    colour_hint: float = 0.6  # 0: colours say nothing about the class; 1: one fixed colour per class

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        h, w = self.image_size
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"synthetic: seed={self.seed!r} must be a whole number >= 0")
        if min(h, w) < 16:
            raise UserError(f"synthetic: image size {h}x{w} is too small; use at least 16x16")
        self._check_memory(h, w)
        for split in SPLIT_CODES:
            if self.num_items(split) < 0:
                raise UserError(f"synthetic: {split}={self.num_items(split)} is negative; use a count >= 0")
        if not 1 <= self.min_objects <= self.max_objects:
            raise UserError(f"synthetic: need 1 <= min_objects <= max_objects, got {self.min_objects} and {self.max_objects}")
        for name in ("texture_prob", "colour_hint"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"synthetic: {name}={getattr(self, name)} is not in 0..1")

    @staticmethod
    def _check_memory(h: int, w: int) -> None:
        from seg2tflite.memory import available_bytes, gigabytes, largest_fitting

        budget = available_bytes()
        need = lambda y, x: y * x * RENDER_BYTES_PER_PIXEL  # noqa: E731
        if budget is not None and need(h, w) > budget:
            best = largest_fitting(need, (h, w), budget)
            fits = f"the largest size that fits is about {best[0]}x{best[1]}" if best else "no size fits"
            raise UserError(
                f"synthetic: size {h}x{w} needs {gigabytes(need(h, w))} of memory to draw one image "
                f"({RENDER_BYTES_PER_PIXEL} bytes a pixel), more than the {gigabytes(budget)} available; {fits}"
            )

    def num_items(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    def to_spec(self) -> str:
        """The ``--data`` spec that rebuilds this dataset."""
        h, w = self.image_size
        return (
            f"synthetic:seed={self.seed},size={h}x{w},train={self.num_train},val={self.num_val},"
            f"test={self.num_test},min_objects={self.min_objects},max_objects={self.max_objects},"
            f"texture_prob={self.texture_prob},colour_hint={self.colour_hint}"
        )


class SyntheticDataset(SegmentationDataset):
    """One split of the synthetic dataset; items are rendered on demand."""

    def __init__(self, split: str = "train", config: SyntheticConfig | None = None):
        if split not in SPLIT_CODES:
            raise UserError(f"split {split!r}: the synthetic dataset has {', '.join(SPLIT_CODES)}")
        self.config = config or SyntheticConfig()
        self.split = split
        self.info = SYNTHETIC_INFO

    def __len__(self) -> int:
        return self.config.num_items(self.split)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        return index % n

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = render(self.config, self.split, self._index(index))
        return image, mask

    def instances(self, index: int) -> np.ndarray:
        """uint8 (H, W) map of which pasted object (1, 2, ...) shows at each pixel; 0 = background."""
        return render(self.config, self.split, self._index(index))[2]

    def __repr__(self) -> str:
        return f"SyntheticDataset({self.split!r}, {self.config})"


def render(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item ``index`` of ``split``: ``(image uint8 (H, W, 3), mask uint8 (H, W), instances uint8 (H, W))``."""
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    h, w = config.image_size
    canvas = _background(rng, h, w, config.colour_hint)
    mask = np.zeros((h, w), np.uint8)
    instances = np.zeros((h, w), np.uint8)
    count = 0
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        count += 1
        _paste_object(rng, canvas, mask, instances, count, config)
    # Occlusion can hide objects; each one added on top shows, so this ends quickly.
    while count < 250 and _visible_objects(instances, count) < config.min_objects:
        count += 1
        _paste_object(rng, canvas, mask, instances, count, config)
    return _camera(rng, canvas), mask, instances


def _visible_objects(instances: np.ndarray, count: int) -> int:
    pixels = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    return int((pixels >= MIN_VISIBLE_PIXELS).sum())


@functools.lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of linear interpolation from n_in samples to n_out (corners aligned)."""
    pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), n_in - 2)
    f = pos - i0
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - f
    m[np.arange(n_out), i0 + 1] = f
    m.setflags(write=False)
    return m


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small (gh, gw, C) grid to (h, w, C)."""
    rows = np.tensordot(_interp_matrix(h, grid.shape[0]), grid, axes=(1, 0))  # (h, gw, C)
    return _interp_matrix(w, grid.shape[1]) @ rows  # (w, gw) @ (h, gw, C) -> (h, w, C)


def _pattern(rng: np.random.Generator, kind: int, u: np.ndarray, v: np.ndarray, extent: float) -> np.ndarray:
    """A texture's mixing weight in 0..1 at local coordinates ``(u, v)`` (pixels)."""
    if kind == FLAT:
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    a = rng.uniform(0, 2 * math.pi)
    tu = u * math.cos(a) + v * math.sin(a)
    tv = v * math.cos(a) - u * math.sin(a)
    period = rng.uniform(3.0, 10.0)
    tu = tu + rng.uniform(0, period)
    if kind == STRIPES:
        return ((tu % period) < period * rng.uniform(0.35, 0.65)).astype(np.float32)
    if kind == CHECKER:
        return ((np.floor(tu / period) + np.floor(tv / period)) % 2).astype(np.float32)
    if kind == DOTS:
        du, dv = tu % period - period / 2, tv % period - period / 2
        return (du * du + dv * dv < (period * rng.uniform(0.2, 0.35)) ** 2).astype(np.float32)
    if kind == GRADIENT:
        return np.clip((tu / max(extent, 1.0) + 1) / 2, 0, 1).astype(np.float32)
    shape = np.broadcast_shapes(u.shape, v.shape)  # SPECKLE
    return (rng.random(shape, dtype=np.float32) < rng.uniform(0.3, 0.6)).astype(np.float32)


def _colour(rng: np.random.Generator, cls: int, hint: float) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32) * np.float32(1 - hint) + _TINT[cls] * np.float32(hint)


def _background(rng: np.random.Generator, h: int, w: int, hint: float) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    a = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(a) + ys * math.sin(a)) / math.hypot(h, w) + 0.5
    c1, c2 = _colour(rng, BACKGROUND, hint), _colour(rng, BACKGROUND, hint)
    canvas = c1 + np.clip(ramp, 0, 1)[..., None] * (c2 - c1)
    grid = rng.standard_normal((int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.float32)
    canvas += _upsample(grid, h, w) * rng.uniform(5, 35)
    if rng.random() < 0.3:  # a faint texture over the whole background
        t = _pattern(rng, int(rng.choice([STRIPES, CHECKER, DOTS])), xs - w / 2, ys - h / 2, max(h, w))
        canvas += (t[..., None] - 0.5) * rng.uniform(8, 25) * rng.choice([-1.0, 1.0], 3).astype(np.float32)
    for _ in range(int(rng.integers(0, 5))):  # soft blobs: clutter that is still background
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(3, 0.2 * min(h, w))
        y0, y1 = max(0, int(cy - 3 * sigma)), min(h, int(cy + 3 * sigma) + 1)
        x0, x1 = max(0, int(cx - 3 * sigma)), min(w, int(cx + 3 * sigma) + 1)
        d2 = (ys[y0:y1] - cy) ** 2 + (xs[:, x0:x1] - cx) ** 2
        alpha = np.exp(d2 / (-2 * sigma * sigma)) * rng.uniform(0.25, 0.6)
        patch = canvas[y0:y1, x0:x1]
        patch += alpha[..., None] * (_colour(rng, BACKGROUND, hint) - patch)
    return canvas.astype(np.float32)


def _shape(cls: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a class's shape in local coordinates, size parameter ``r`` (pixels)."""
    if cls == DISC:
        b = r * rng.uniform(0.55, 1.0)
        return (u / r) ** 2 + (v / b) ** 2 <= 1
    if cls == RECTANGLE:
        return (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(0.3, 1.0))
    if cls == TRIANGLE:
        v = v * rng.uniform(0.7, 1.4)  # stretched: isosceles as well as equilateral
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape), bool)
        for k in range(3):  # three half-planes at the inradius r/2 of an equilateral triangle
            a = math.pi / 2 + k * 2 * math.pi / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= r / 2
        return inside
    if cls == RING:
        rho = np.hypot(u, v)
        return (rho <= r) & (rho >= r * rng.uniform(0.45, 0.8))
    if cls == LINE:
        half_width = rng.uniform(0.6, 1.6)  # 1-3 px wide
        return (np.abs(v) <= half_width) & (np.abs(u) <= r)
    if cls == CROSS:
        t = r * rng.uniform(0.18, 0.32)
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= t)) | ((au <= t) & (av <= r))
    if cls == STAR:
        inner = rng.uniform(0.38, 0.55)
        frac = (np.arctan2(v, u) * (5 / (2 * math.pi))) % 1.0
        tip = np.abs(frac * 2 - 1)  # 1 at the five points, 0 between them
        return np.hypot(u, v) <= r * (inner + (1 - inner) * tip)
    raise ValueError(f"no shape for class {cls}")


def _paste_object(
    rng: np.random.Generator,
    canvas: np.ndarray,
    mask: np.ndarray,
    instances: np.ndarray,
    instance_id: int,
    config: SyntheticConfig,
) -> None:
    h, w = mask.shape
    m = min(h, w)
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    if cls == LINE:
        r = rng.uniform(0.12, 0.45) * m  # half length
    else:
        r = math.exp(rng.uniform(math.log(3.0), math.log(0.45 * m)))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    y0, y1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    a = rng.uniform(0, 2 * math.pi)
    u = dx * math.cos(a) + dy * math.sin(a)
    v = dy * math.cos(a) - dx * math.sin(a)
    inside = _shape(cls, rng, u, v, r)
    kind = PREFERRED_TEXTURE[cls] if rng.random() < config.texture_prob else int(rng.integers(NUM_TEXTURES))
    c1 = _colour(rng, cls, config.colour_hint)
    c2 = c1 + (rng.uniform(10, 245, 3).astype(np.float32) - c1) * rng.uniform(0.35, 0.9)
    t = np.broadcast_to(_pattern(rng, kind, u, v, r), inside.shape)
    colours = c1 + t[..., None] * (c2 - c1)
    canvas[y0:y1, x0:x1][inside] = colours[inside]
    mask[y0:y1, x0:x1][inside] = cls
    instances[y0:y1, x0:x1][inside] = instance_id


def _camera(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Per-image contrast, brightness, colour gain, occasional blur and sensor noise -> uint8."""
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    img = (canvas - 128.0) * gain + 128.0 + rng.uniform(-25, 25)
    if rng.random() < 0.25:  # 3x3 box blur: softens edges without moving the mask
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = sum(p[i : i + img.shape[0], j : j + img.shape[1]] for i in range(3) for j in range(3)) / 9.0
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
