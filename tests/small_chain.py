"""A small CNN and a blob dataset that carry the whole conversion chain in seconds (shared by tests)."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.data.base import DatasetInfo, SegmentationDataset

SIZE = (32, 48)
K = 4


class SmallSegNet(nn.Module):
    """conv/BN/ReLU/pool, then bilinear upsampling back to the input size."""

    def __init__(self, num_classes=K):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        y = self.head(self.body(self.pool(self.stem(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class BlobDataset(SegmentationDataset):
    """Coloured rectangles on noise; the class is the rectangle's colour index."""

    def __init__(self, split, n=16, num_classes=K, name="blobs"):
        self.split, self.n = split, n
        self.info = DatasetInfo(name, tuple(f"c{i}" for i in range(num_classes)), ((0, 0, 0),) * num_classes)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i + 1000 * ("train", "val", "test").index(self.split))
        image = rng.integers(0, 80, (*SIZE, 3), dtype=np.uint8)
        mask = np.zeros(SIZE, np.uint8)
        for c in range(1, self.info.num_classes):
            y, x = rng.integers(0, SIZE[0] - 8), rng.integers(0, SIZE[1] - 8)
            image[y : y + 8, x : x + 8] = (60 * c) % 256
            mask[y : y + 8, x : x + 8] = c
        return image, mask


def small_model():
    torch.manual_seed(0)
    model = SmallSegNet()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()
