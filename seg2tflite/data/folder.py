"""The generic folder layout: ``DIR/{train,val,test}/{images,masks}/`` plus ``DIR/dataset.json``.

Images are any common format; masks are single-channel class-index PNGs (value = class,
255 = ignore) with the same file stem as their image. ``dataset.json`` (written by
``write_folder_dataset``) carries ``class_names``, ``palette`` and ``ignore_index``; without it the
caller must say how many classes there are and they are named ``class_0 .. class_{K-1}``.
``write_folder_dataset`` writes any datasets in this layout (e.g. the synthetic one, to inspect
it or to hand it to other tools).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from seg2tflite.atomic import atomic_path
from seg2tflite.data.base import DatasetInfo, SegmentationDataset, class_name_problem
from seg2tflite.data.preprocess import IGNORE_INDEX
from seg2tflite.data.readers import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    FileSegmentationDataset,
    identity_lut,
    list_files,
    pair_by_stem,
    require_dir,
    voc_colormap,
)
from seg2tflite.errors import UserError, setting
from seg2tflite.records import sha256_file

DATASET_JSON = "dataset.json"
FORMAT = "seg2tflite-folder"


def folder_info(root: str | Path, num_classes: int | None = None) -> DatasetInfo:
    """Class names and palette of a folder dataset, from its ``dataset.json`` or ``num_classes``."""
    root = require_dir(Path(root), "dataset folder")
    meta_path = root / DATASET_JSON
    if not meta_path.is_file():
        if num_classes is None:
            raise UserError(
                f"{meta_path}: not found, so the number of classes is unknown; "
                f"add a dataset.json with class_names or pass {setting('num_classes')}"
            )
        if not 1 <= int(num_classes) <= 255:
            raise UserError(f"{setting('num_classes')}: {num_classes} is out of range; use 1..255")
        k = int(num_classes)
        return DatasetInfo("folder", tuple(f"class_{i}" for i in range(k)), voc_colormap(k))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path}: cannot parse ({e}); fix or delete the file") from None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{meta_path}: 'class_names' must be a non-empty list of strings; fix the file")
    for i, class_name in enumerate(names):
        problem = class_name_problem(class_name)
        if problem:
            raise UserError(f"{meta_path}: class_names[{i}] {class_name!r} {problem}; rename the class")
    if len(names) > 255:
        raise UserError(f"{meta_path}: {len(names)} classes; at most 255 fit an 8-bit mask beside ignore (255)")
    if num_classes is not None and int(num_classes) != len(names):
        raise UserError(
            f"{setting('num_classes')}: {num_classes} disagrees with the {len(names)} class_names in {meta_path}; "
            f"drop {setting('num_classes')} or fix the file"
        )
    ignore = meta.get("ignore_index", IGNORE_INDEX)
    if ignore != IGNORE_INDEX:
        raise UserError(f"{meta_path}: ignore_index {ignore!r} is not supported; relabel ignored pixels as 255")
    palette = meta.get("palette")
    if palette is None:
        palette = voc_colormap(len(names))
    else:
        ok = (
            isinstance(palette, list)
            and len(palette) == len(names)
            and all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)
        )
        if not ok:
            raise UserError(f"{meta_path}: 'palette' must be one [r, g, b] (0..255) per class; fix or remove it")
        palette = tuple(tuple(c) for c in palette)
    name = meta.get("name", "folder")
    return DatasetInfo(str(name), tuple(names), palette)


class FolderDataset(FileSegmentationDataset):
    """``ROOT/{split}/images/*`` paired by stem with ``ROOT/{split}/masks/*.png``."""

    def __init__(self, root: str | Path, split: str, num_classes: int | None = None):
        root = Path(root)
        info = folder_info(root, num_classes)
        image_dir = require_dir(root / split / "images", f"'{split}' images folder")
        mask_dir = require_dir(root / split / "masks", f"'{split}' masks folder")
        images = list_files(image_dir, IMAGE_EXTENSIONS)
        if not images:
            raise UserError(f"{image_dir}: no images in it; put the {split} images there or pick another split")
        pairs = pair_by_stem(images, list_files(mask_dir, MASK_EXTENSIONS), mask_dir)
        super().__init__(info, split, pairs, identity_lut(info.num_classes), root)


def write_folder_dataset(
    datasets: Mapping[str, SegmentationDataset],
    out_dir: str | Path,
    progress: bool = True,
    source: str | None = None,
) -> Path:
    """Write ``{split: dataset}`` in the folder layout, whole or not at all; returns ``out_dir``.

    Images go to ``split/images/NAME.png`` (RGB), masks to ``split/masks/NAME.png`` (mode L class
    indices), ``NAME`` being ``ds.item_name(i)``; ``dataset.json`` records the class names, palette,
    ignore index, split sizes and ``source`` (e.g. the ``--data`` spec the data came from). The
    folder is built under a temporary name and renamed when complete; ``dataset.json`` also records
    every file's sha256. An existing ``out_dir`` is replaced only when empty or when every file in
    it is one this function wrote there (recorded, same hash): nothing of the user's is lost.
    """
    out_dir = Path(out_dir)
    if not datasets:
        raise UserError(f"{out_dir}: nothing to write; give at least one split")
    infos = {ds.info for ds in datasets.values()}
    if len(infos) != 1:
        raise UserError(f"{out_dir}: the splits disagree on their classes; write them to separate folders")
    info = infos.pop()
    if out_dir.exists() or out_dir.is_symlink():
        _check_replaceable(out_dir)
    meta = {
        "format": FORMAT,
        "name": info.name,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "splits": {split: len(ds) for split, ds in datasets.items()},
        "source": source,
    }
    total = sum(len(ds) for ds in datasets.values())
    with atomic_path(out_dir) as tmp, tqdm(total=total, disable=not progress, desc=f"writing {out_dir.name}", unit="img") as bar:
        for split, ds in datasets.items():
            image_dir, mask_dir = tmp / split / "images", tmp / split / "masks"
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            seen: set[str] = set()
            for i in range(len(ds)):
                name = ds.item_name(i)
                if name in seen:
                    raise UserError(f"{out_dir}: two {split} items are both named {name!r}; names must be unique")
                seen.add(name)
                image, mask = ds[i]
                Image.fromarray(image).save(image_dir / f"{name}.png", compress_level=1)
                mask_png = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode L
                mask_png.save(mask_dir / f"{name}.png", compress_level=1)
                bar.update()
        meta["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / DATASET_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace ``out_dir`` unless it is empty or a dataset this project wrote, every file
    in it the one ``dataset.json`` records (same hash): the user's images, masks and notes stay."""
    if out_dir.is_symlink():
        raise UserError(f"{out_dir}: is a symbolic link (to {out_dir.resolve()}); give the real folder's path or a new one")
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: a file is in the way of the dataset folder; choose a new path or move the file")
    if not any(out_dir.iterdir()):
        return
    refuse = f"{out_dir}: not a folder dataset seg2tflite wrote"
    advice = "it is never replaced; choose a new path (or move the folder)"
    try:
        meta = json.loads((out_dir / DATASET_JSON).read_text(encoding="utf-8"))
        recorded = meta["files"] if meta.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        raise UserError(f"{refuse} (no record of its files in {DATASET_JSON}); {advice}")
    for path in sorted(out_dir.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(out_dir).as_posix()
        if rel == DATASET_JSON:
            continue
        if path.is_symlink() or recorded.get(rel) != sha256_file(path):
            raise UserError(f"{refuse}: {rel} is not as seg2tflite wrote it; {advice}")
