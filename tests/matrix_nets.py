"""The regression matrix tests' models and data (read as ``tests/matrix_nets.py:FUNCTION`` modules).

``LevelDataset``: rectangles whose grey level is their class, on a dark background. ``level_net``
segments it perfectly with one 1x1 conv (the linear discriminant of the levels). ``fragile_net``
computes the same, but through a weight of 2**-26, which float16 cannot hold (it rounds to 0): its
float16 file predicts the background everywhere, a planted error only the float16 cell must catch.
"""

import os
import signal
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg2tflite.data.base import DatasetInfo, SegmentationDataset

LEVELS = (0.1, 0.4, 0.7, 1.0)  # grey level of each class (0: background), on a 0..1 image
SIZE = 32


class LevelDataset(SegmentationDataset):
    def __init__(self, split, n=8):
        self.split, self.n = split, n
        self.info = DatasetInfo("levels", tuple(f"level{i}" for i in range(len(LEVELS))), ((0, 0, 0),) * len(LEVELS))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i + 1000 * ("train", "val", "test").index(self.split))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for c in range(1, len(LEVELS)):
            y, x = rng.integers(0, SIZE - 10, 2)
            mask[y : y + 10, x : x + 10] = c
        level = np.asarray(LEVELS, np.float32)[mask] * 255
        image = np.clip(level[..., None] + rng.integers(-10, 11, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        return image, mask


def write_levels(folder, n=8):
    from seg2tflite.data.folder import write_folder_dataset

    return write_folder_dataset({s: LevelDataset(s, n) for s in ("train", "val", "test")}, folder, progress=False)


def _head(conv: nn.Conv2d, scale: float) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.zero_()
        for k, s in enumerate(LEVELS):
            conv.weight[k, 0] = s * scale
            conv.bias[k] = -s * s / 2
    return conv


def level_net():
    return _head(nn.Conv2d(3, len(LEVELS), 1), 1.0).eval()


DIE_ONCE = "MATRIX_NETS_DIE_ONCE"


class _DiesOnce(nn.Module):
    """``level_net`` whose process is killed (SIGKILL, as a native crash or the kernel's OOM killer
    would) at its third forward call, once: when ``$MATRIX_NETS_DIE_ONCE`` names a file that does
    not exist yet, the dying process writes its pid there first."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = level_net(), 0

    def forward(self, x):
        self.calls += 1
        marker = os.environ.get(DIE_ONCE)
        if marker and self.calls == 3 and not Path(marker).exists():
            Path(marker).write_text(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def level_net_dies_once():
    return _DiesOnce().eval()


def fragile_net():
    tiny, big = nn.Conv2d(3, 1, 1), nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        tiny.weight.zero_()
        tiny.weight[0, 0] = 2.0**-26  # exact in float32, 0 in float16
        tiny.bias.zero_()
        big.weight.fill_(2.0**13)
        big.bias.zero_()
    return nn.Sequential(tiny, nn.ReLU(), big, nn.ReLU(), _head(nn.Conv2d(1, len(LEVELS), 1), 2.0**13)).eval()
