"""What every dataset reader provides: raw images and masks plus the class names and palette."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from seg2tflite.data.preprocess import IGNORE_INDEX
from seg2tflite.errors import UserError


def class_name_problem(name: str) -> str | None:
    """Why a class name cannot be written one per line (labels.txt) and in a table cell
    (per_class_iou.md); None when it can."""
    if not name.strip():
        return "is blank"
    bad = sorted({c for c in name if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")})
    if bad:
        return f"holds {', '.join(repr(c) for c in bad)} (a line break or control character would split labels.txt's lines)"
    return None


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # e.g. "synthetic", "ade20k"
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # one RGB colour per class
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        for name in self.class_names:  # they go one per line into labels.txt and into table cells
            problem = class_name_problem(str(name))
            if problem:
                raise UserError(f"dataset {self.name!r}: class name {name!r} {problem}; rename the class")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationDataset:
    """A split of a dataset. ``ds[i]`` is ``(image uint8 (H, W, 3), mask uint8 (H, W))``.

    Mask values are class indices ``0..num_classes-1`` or ``IGNORE_INDEX`` (255); every reader maps
    its dataset's own label scheme onto this one.
    """

    info: DatasetInfo
    split: str
    spec: str | None = None  # the --data spec it was loaded from (set by ``load_dataset``)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """A stable name for item ``index`` (a file stem), recorded in manifests."""
        return f"{self.split}_{index:06d}"


def describe_data(data) -> str:
    """How a message names a dataset split: the spec the user gave (``folder:PATH``), else its name."""
    spec = getattr(data, "spec", None)
    if spec:
        return spec
    info, split = getattr(data, "info", None), getattr(data, "split", None)
    if info is not None:
        return f"{info.name}:{split}" if split else info.name
    return str(getattr(data, "source", data))
