"""Cityscapes fine annotations, as published (leftImg8bit_trainvaltest + gtFine_trainvaltest).

Layout: ``ROOT/leftImg8bit/{split}/CITY/*_leftImg8bit.png`` with
``ROOT/gtFine/{split}/CITY/*_gtFine_labelIds.png``. Label ids map to the 19 evaluation train ids
of the official table (cityscapesScripts ``labels.py``); every other id becomes ignore (255).
The public test annotations are placeholders, so ``test`` reads ``val``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg2tflite.data.base import DatasetInfo
from seg2tflite.data.preprocess import IGNORE_INDEX
from seg2tflite.data.readers import FileSegmentationDataset, list_files, pair_by_stem, require_dir
from seg2tflite.errors import UserError

# (name, labelId, colour) for the 19 classes that have a train id, in train-id order.
_CLASSES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CITYSCAPES_INFO = DatasetInfo("cityscapes", tuple(c[0] for c in _CLASSES), tuple(c[2] for c in _CLASSES))
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}


def label_id_to_train_id() -> np.ndarray:
    """256-entry table: Cityscapes labelId -> train id 0..18, anything else -> 255."""
    lut = np.full(256, IGNORE_INDEX, np.int16)
    for train_id, (_, label_id, _) in enumerate(_CLASSES):
        lut[label_id] = train_id
    return lut


class CityscapesDataset(FileSegmentationDataset):
    def __init__(self, root: str | Path, split: str):
        root = require_dir(Path(root), "Cityscapes folder")
        if split not in SPLIT_FOLDERS:
            raise UserError(f"split {split!r}: Cityscapes has train, val, test (test reads val)")
        folder = SPLIT_FOLDERS[split]
        image_root = require_dir(root / "leftImg8bit" / folder, "Cityscapes leftImg8bit folder")
        mask_root = require_dir(root / "gtFine" / folder, "Cityscapes gtFine folder")
        pairs = []
        for city in sorted(p for p in image_root.iterdir() if p.is_dir()):
            images = list_files(city, (".png",), suffix="_leftImg8bit")
            mask_dir = mask_root / city.name
            masks = list_files(mask_dir, (".png",), suffix="_gtFine_labelIds") if mask_dir.is_dir() else {}
            pairs += pair_by_stem(images, masks, mask_dir, mask_suffix="_gtFine_labelIds")
        if not pairs:
            raise UserError(f"{image_root}: no images in it (expected CITY/*_leftImg8bit.png)")
        super().__init__(CITYSCAPES_INFO, split, pairs, label_id_to_train_id(), root, source_split=folder)
