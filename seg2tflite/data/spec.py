"""The ``--data`` spec string: which dataset, where, and with which options.

``synthetic`` or ``synthetic:KEY=VALUE,...`` builds the synthetic dataset; ``KIND:PATH`` reads a
dataset from disk in its published layout (``folder``, ``ade20k``, ``voc``, ``cityscapes``,
``camvid``). ``load_dataset(spec, split)`` returns one split as a ``SegmentationDataset``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from seg2tflite.data.ade20k import ADE20K_INFO, ADE20KDataset
from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.data.camvid import CAMVID_INFO, CamVidDataset
from seg2tflite.data.cityscapes import CITYSCAPES_INFO, CityscapesDataset
from seg2tflite.data.folder import FolderDataset, folder_info
from seg2tflite.data.synthetic import SYNTHETIC_INFO, SyntheticConfig, SyntheticDataset
from seg2tflite.data.voc import VOC_INFO, VOCDataset
from seg2tflite.errors import UserError, setting

SPLITS = ("train", "val", "test")

DATA_SPEC_HELP = (
    "Dataset to use. 'synthetic' (built in, no download; options as "
    "'synthetic:seed=3,size=96,train=500': seed, size (N or HxW), train, val, test (images per split), "
    "min_objects, max_objects, texture_prob and colour_hint (0..1; higher is easier)); "
    "'folder:PATH' (PATH/{train,val,test}/images/* with class-index PNG "
    "masks in PATH/{split}/masks/, same stem; class names from PATH/dataset.json, else give "
    "--num-classes); 'ade20k:PATH' (ADEChallengeData2016; 150 classes, test reads validation); "
    "'voc:PATH' (VOC2012 or VOCdevkit folder; 21 classes, test reads val); 'cityscapes:PATH' "
    "(leftImg8bit + gtFine; 19 train ids, test reads val); 'camvid:PATH' (SegNet tutorial layout; "
    "11 classes, void ignored)."
)

# spec key -> (SyntheticConfig field, parser)
_SYNTHETIC_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "seed": ("seed", int),
    "size": ("image_size", lambda v: _parse_size(v)),
    "train": ("num_train", int),
    "val": ("num_val", int),
    "test": ("num_test", int),
    "min_objects": ("min_objects", int),
    "max_objects": ("max_objects", int),
    "texture_prob": ("texture_prob", float),
    "colour_hint": ("colour_hint", float),
}

_READERS = {
    "folder": FolderDataset,
    "ade20k": ADE20KDataset,
    "voc": VOCDataset,
    "cityscapes": CityscapesDataset,
    "camvid": CamVidDataset,
}
_STATIC_INFO = {"ade20k": ADE20K_INFO, "voc": VOC_INFO, "cityscapes": CITYSCAPES_INFO, "camvid": CAMVID_INFO}
KINDS = ("synthetic", *_READERS)


def _parse_size(value: str) -> tuple[int, int]:
    parts = value.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(value)
    return int(parts[0]), int(parts[1])


def parse_synthetic_spec(spec: str, option: str = "data") -> SyntheticConfig:
    """``synthetic[:key=value,...]`` -> ``SyntheticConfig`` (keys: see ``DATA_SPEC_HELP``)."""
    _, _, options = spec.partition(":")
    values: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in options.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if key not in _SYNTHETIC_KEYS or not eq:
            raise UserError(
                f"{setting(option)} {spec}: bad option {item!r}; use key=value with keys {', '.join(_SYNTHETIC_KEYS)}"
            )
        name, parse = _SYNTHETIC_KEYS[key]
        try:
            values[name] = parse(raw.strip())
        except ValueError:
            raise UserError(
                f"{setting(option)} {spec}: {key}={raw!r} is not a valid value; e.g. seed=3, size=96x128, train=500"
            ) from None
    assert set(values) <= {f.name for f in fields(SyntheticConfig)}
    try:
        return SyntheticConfig(**values)
    except UserError as e:
        raise UserError(f"{setting(option)} {spec}: {e}") from None


def _split_spec(spec: str, option: str = "data") -> tuple[str, str]:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(f"{setting(option)} {spec}: unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind != "synthetic" and not rest:
        raise UserError(f"{setting(option)} {spec}: {kind} needs a path, as '{kind}:PATH'")
    return kind, rest


def load_dataset(spec: str, split: str, num_classes: int | None = None, option: str = "data") -> SegmentationDataset:
    """One split (``train``, ``val`` or ``test``) of the dataset ``spec`` names.

    ``num_classes`` is used only by ``folder:`` datasets without a ``dataset.json``; ``option``
    is the setting that gave ``spec`` (``data``, ``calib_data``), for the messages.
    """
    if split not in SPLITS:
        raise UserError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    kind, rest = _split_spec(spec, option)
    if kind == "synthetic":
        dataset = SyntheticDataset(split, parse_synthetic_spec(spec, option))
    else:
        path = Path(rest).expanduser()
        if not path.exists():
            raise UserError(f"{path}: does not exist; check the path in {setting(option)} {spec}")
        dataset = FolderDataset(path, split, num_classes=num_classes) if kind == "folder" else _READERS[kind](path, split)
    dataset.spec = spec
    return dataset


def declares_classes(spec: str) -> bool:
    """Whether ``spec`` says its own classes (everything but a ``folder:`` without dataset.json)."""
    kind, rest = _split_spec(spec)
    return kind != "folder" or (Path(rest).expanduser() / "dataset.json").is_file()


def dataset_info(spec: str, num_classes: int | None = None, option: str = "data") -> DatasetInfo:
    """Class names and palette of ``spec`` without listing its files."""
    kind, rest = _split_spec(spec, option)
    if kind == "synthetic":
        parse_synthetic_spec(spec, option)  # reject bad options here too
        return SYNTHETIC_INFO
    if kind == "folder":
        return folder_info(Path(rest).expanduser(), num_classes)
    return _STATIC_INFO[kind]
