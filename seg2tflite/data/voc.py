"""PASCAL VOC 2012 segmentation, as published in VOCtrainval (``VOCdevkit/VOC2012``).

Layout: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs whose *indices* are the
labels: 0 background, 1..20 objects, 255 object boundaries = ignore) and the split lists
``ImageSets/Segmentation/{train,val}.txt``. VOC publishes no test masks, so ``test`` reads ``val``.
The path may be the ``VOC2012`` folder or the ``VOCdevkit`` folder holding it.
"""

from __future__ import annotations

from pathlib import Path

from seg2tflite.data.base import DatasetInfo
from seg2tflite.data.readers import FileSegmentationDataset, identity_lut, require_dir, voc_colormap
from seg2tflite.errors import UserError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

VOC_INFO = DatasetInfo("voc", VOC_CLASSES, voc_colormap(len(VOC_CLASSES)))
SPLIT_LISTS = {"train": "train", "val": "val", "test": "val"}


def _voc_root(path: Path) -> Path:
    require_dir(path, "VOC folder")
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise UserError(f"{path}: no JPEGImages folder here or in VOC2012/; pass the VOC2012 or VOCdevkit folder")


class VOCDataset(FileSegmentationDataset):
    def __init__(self, root: str | Path, split: str):
        root = _voc_root(Path(root))
        if split not in SPLIT_LISTS:
            raise UserError(f"split {split!r}: VOC has train, val, test (test reads val)")
        list_path = root / "ImageSets" / "Segmentation" / f"{SPLIT_LISTS[split]}.txt"
        if not list_path.is_file():
            raise UserError(f"{list_path}: split list not found; is this the VOC2012 trainval release?")
        try:
            text = list_path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or type(e).__name__
            raise UserError(f"{list_path}: unreadable split list ({reason}); restore the file from the VOC release") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise UserError(f"{list_path}: no image names in it; restore the file from the VOC release")
        image_dir = root / "JPEGImages"
        mask_dir = require_dir(root / "SegmentationClass", "VOC SegmentationClass folder")
        pairs = []
        for name in names:
            image, mask = image_dir / f"{name}.jpg", mask_dir / f"{name}.png"
            if not image.is_file():
                raise UserError(f"{image}: listed in {list_path.name} but missing; restore it from the VOC release")
            if not mask.is_file():
                raise UserError(f"{image}: image has no mask (expected {mask}); restore it from the VOC release")
            pairs.append((name, image, mask))
        super().__init__(VOC_INFO, split, pairs, identity_lut(len(VOC_CLASSES)), root, source_split=SPLIT_LISTS[split])
