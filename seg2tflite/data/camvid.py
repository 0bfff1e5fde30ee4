"""CamVid in the SegNet tutorial layout (11 classes, 360x480).

Layout: ``ROOT/{train,val,test}/*.png`` with ``ROOT/{train,val,test}annot/*.png`` of the same
name; labels 0..10 are the classes below and 11 ("void") becomes ignore (255).
"""

from __future__ import annotations

from pathlib import Path

from seg2tflite.data.base import DatasetInfo
from seg2tflite.data.preprocess import IGNORE_INDEX
from seg2tflite.data.readers import FileSegmentationDataset, identity_lut, list_files, pair_by_stem, require_dir
from seg2tflite.errors import UserError

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
# The SegNet tutorial's colours.
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
CAMVID_INFO = DatasetInfo("camvid", CAMVID_CLASSES, CAMVID_PALETTE)
VOID_LABEL = 11


class CamVidDataset(FileSegmentationDataset):
    def __init__(self, root: str | Path, split: str):
        root = require_dir(Path(root), "CamVid folder")
        if split not in ("train", "val", "test"):
            raise UserError(f"split {split!r}: CamVid has train, val, test")
        image_dir = require_dir(root / split, f"CamVid {split} folder")
        mask_dir = require_dir(root / f"{split}annot", f"CamVid {split}annot folder")
        images = list_files(image_dir, (".png",))
        if not images:
            raise UserError(f"{image_dir}: no images in it; is this the SegNet tutorial CamVid folder?")
        pairs = pair_by_stem(images, list_files(mask_dir, (".png",)), mask_dir)
        lut = identity_lut(len(CAMVID_CLASSES))
        lut[VOID_LABEL] = IGNORE_INDEX
        super().__init__(CAMVID_INFO, split, pairs, lut, root)
