"""What the file-based dataset readers share: image/mask reading, label mapping, checks.

Every reader (``folder``, ``ade20k``, ``voc``, ``cityscapes``, ``camvid``) lists its image/mask
pairs when built and reads them lazily. A 256-entry lookup table maps the dataset's raw mask
values onto ``0..K-1`` and ``IGNORE_INDEX``; entries marked ``INVALID`` are values the dataset
never uses, and meeting one raises a ``UserError`` naming the file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.data.preprocess import IGNORE_INDEX
from seg2tflite.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
INVALID = -1  # lookup-table entry for a raw mask value the dataset never uses
_MASK_MODES = ("L", "P", "I", "I;16", "1")
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def voc_colormap(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bits of the class index spread over R, G, B), ``n`` entries."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def hex_palette(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"ff0000 00ff00 ..."`` -> ``((255, 0, 0), (0, 255, 0), ...)``."""
    return tuple((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in text.split())


def identity_lut(num_classes: int) -> np.ndarray:
    """Values ``0..K-1`` stay, 255 stays ignore, everything else is invalid."""
    lut = np.full(256, INVALID, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


@contextlib.contextmanager
def _opened(path: Path, what: str):
    """``Image.open`` refusing, in one line naming the file, one that claims more pixels than can be
    read safely (a few hundred bytes can claim 100000x100000: a decompression bomb); the image is
    turned upright by its EXIF Orientation tag (phones store photos rotated, with that tag)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                yield ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(
            f"{path}: the {what} claims more than {Image.MAX_IMAGE_PIXELS:,} pixels, too many to read safely "
            "(a damaged or hostile file); replace or remove it, or scale it down"
        ) from None


def read_image(path: Path) -> np.ndarray:
    """Any image file -> uint8 (H, W, 3) RGB, upright (EXIF orientation applied), or a
    ``UserError`` naming the file."""
    try:
        with _opened(path, "image") as img:
            if img.mode in _WIDE_GREY_MODES:  # PIL's convert("RGB") would clip these at 255
                return _grey_to_rgb8(np.asarray(img), path)
            if img.mode == "F":
                raise UserError(f"{path}: a floating-point image; save it as an 8- or 16-bit image")
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found; check the dataset path") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read image ({e}); replace or remove the file") from None


def _grey_to_rgb8(raw: np.ndarray, path: Path) -> np.ndarray:
    """A 16-bit (or 32-bit integer holding 16-bit) grey image -> uint8 RGB, 0..65535 onto 0..255."""
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
        raise UserError(f"{path}: grey values up to {int(raw.max())} do not fit 16 bits; save it as an 8- or 16-bit image")
    grey = np.rint(raw.astype(np.float32) / 257.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def read_mask(path: Path) -> np.ndarray:
    """A single-channel class-index image -> its raw values as uint8 (H, W).

    Palette ("P") PNGs give their palette indices, not their colours; an EXIF orientation is
    applied as to the images, so a mask stays aligned with its image.
    """
    try:
        with _opened(path, "mask") as img:
            mode = img.mode
            if mode not in _MASK_MODES:
                raise UserError(
                    f"{path}: mask is a {mode} image; masks must be single-channel class-index "
                    f"images (PNG mode L or P), not colour renderings"
                )
            raw = np.asarray(img)
    except FileNotFoundError:
        raise UserError(f"{path}: mask file not found; check the dataset path") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read mask ({e}); replace or remove the file") from None
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise UserError(
                f"{path}: mask holds value {int(raw.max() if raw.max() > 255 else raw.min())}, "
                f"outside 0..255; class indices must fit in 8 bits"
            )
        raw = raw.astype(np.uint8)
    return raw


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Apply ``lut`` to a raw mask; an ``INVALID`` value raises naming ``path``."""
    mapped = lut[raw]
    if (mapped == INVALID).any():
        bad = np.unique(raw[mapped == INVALID])
        shown = ", ".join(str(int(v)) for v in bad[:8])
        raise UserError(
            f"{path}: mask holds label(s) {shown} beyond the {num_classes} classes "
            f"(valid: 0..{num_classes - 1} and {IGNORE_INDEX} = ignore); fix the mask or the class list"
        )
    return mapped.astype(np.uint8)


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{path}: {what} does not exist; check the dataset path")
    if not path.is_dir():
        raise UserError(f"{path}: {what} is not a folder; check the dataset path")
    return path


def list_files(folder: Path, extensions: Iterable[str], suffix: str = "") -> dict[str, Path]:
    """Files in ``folder`` ending in ``suffix + ext``, keyed by name without ``suffix + ext``."""
    out: dict[str, Path] = {}
    exts = tuple(extensions)
    for p in folder.iterdir():
        name = p.name
        lower = name.lower()
        for ext in exts:
            if lower.endswith(suffix.lower() + ext) and p.is_file():
                out[name[: len(name) - len(suffix) - len(ext)]] = p
                break
    return out


def pair_by_stem(
    images: dict[str, Path], masks: dict[str, Path], mask_dir: Path, mask_suffix: str = ""
) -> list[tuple[str, Path, Path]]:
    """``[(name, image, mask)]`` sorted by name; an image without its mask raises.

    ``mask_suffix`` is the part of the mask's file name after the shared stem (e.g. Cityscapes'
    ``_gtFine_labelIds``), used only to name the missing file."""
    pairs = []
    for name in sorted(images):
        if name not in masks:
            raise UserError(
                f"{images[name]}: image has no mask (expected {mask_dir / (name + mask_suffix)}.png); add the mask or "
                f"remove the image"
            )
        pairs.append((name, images[name], masks[name]))
    return pairs


class FileSegmentationDataset(SegmentationDataset):
    """A dataset given as ``(name, image path, mask path)`` triples plus a raw-label lookup table."""

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        pairs: Sequence[tuple[str, Path, Path]],
        lut: np.ndarray,
        root: Path,
        source_split: str | None = None,
    ):
        self.info = info
        self.split = split
        self.source_split = source_split or split  # the dataset's own split folder actually read
        self.root = root
        self.pairs = list(pairs)
        self.lut = lut

    def __len__(self) -> int:
        return len(self.pairs)

    def item_name(self, index: int) -> str:
        return self.pairs[index][0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self.pairs) <= index < len(self.pairs):
            raise IndexError(f"index {index} out of range for {len(self.pairs)} items")
        _, image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise UserError(
                f"{mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image {image_path.name} "
                f"is {image.shape[1]}x{image.shape[0]} (WxH); masks must match their images pixel for pixel"
            )
        return image, map_labels(raw, self.lut, mask_path, self.info.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, items={len(self)})"


def validate_dataset(ds: SegmentationDataset, limit: int | None = None) -> int:
    """Read items ``0..limit-1`` (all by default); raise ``UserError`` on the first bad one.

    Checks what every reader promises (uint8 (H, W, 3) image, uint8 (H, W) mask of the same size,
    labels in ``0..K-1`` or ignore), so it also vets datasets not built from files. Returns the
    number of items checked.
    """
    n = len(ds) if limit is None else min(len(ds), int(limit))
    k = ds.info.num_classes
    for i in range(n):
        image, mask = ds[i]
        where = f"{ds.info.name}/{ds.split}/{ds.item_name(i)}"
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{where}: image is {image.dtype} {image.shape}, expected uint8 (H, W, 3)")
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise UserError(f"{where}: mask is {mask.dtype} {mask.shape}, expected uint8 {image.shape[:2]} to match its image")
        bad = (mask >= k) & (mask != ds.info.ignore_index)
        if bad.any():
            raise UserError(f"{where}: mask holds label {int(mask[bad].max())} beyond the {k} classes; fix the mask")
    return n
