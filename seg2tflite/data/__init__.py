"""Datasets: the built-in synthetic one, readers for published layouts, and the ``--data`` spec.

``TorchSegDataset`` (which needs torch) lives in ``seg2tflite.data.torch_dataset`` and is
imported from here on first use, so the readers stay usable without torch.
"""

from typing import TYPE_CHECKING

from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.data.folder import FolderDataset, write_folder_dataset
from seg2tflite.data.preprocess import IGNORE_INDEX, Preprocess
from seg2tflite.data.readers import validate_dataset
from seg2tflite.data.spec import DATA_SPEC_HELP, KINDS, dataset_info, load_dataset
from seg2tflite.data.synthetic import SyntheticConfig, SyntheticDataset

if TYPE_CHECKING:  # imported on first use below, so the readers stay usable without torch
    from seg2tflite.data.torch_dataset import TorchSegDataset

__all__ = [
    "DATA_SPEC_HELP",
    "IGNORE_INDEX",
    "KINDS",
    "DatasetInfo",
    "FolderDataset",
    "Preprocess",
    "SegmentationDataset",
    "SyntheticConfig",
    "SyntheticDataset",
    "TorchSegDataset",
    "dataset_info",
    "load_dataset",
    "validate_dataset",
    "write_folder_dataset",
]


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelled name is an error there, not Any

    def __getattr__(name: str):
        if name == "TorchSegDataset":
            from seg2tflite.data.torch_dataset import TorchSegDataset

            return TorchSegDataset
        raise AttributeError(f"module 'seg2tflite.data' has no attribute {name!r}")
