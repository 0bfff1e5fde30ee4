"""The tests' one small CNN, a blob dataset, and the helpers that register and convert it.

``SmallSegNet`` carries the whole conversion chain in seconds; ``registered_small(name, ...)``
puts it in the model registry for as long as a test module needs it and removes it after, so no
test model leaks into the registry other tests iterate over.
"""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.models.registry import ModelConfig, register_model, unregister_model

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


@contextlib.contextmanager
def registered_small(name: str, **config):
    """``SmallSegNet`` registered as ``name`` (ModelConfig fields in ``config``) inside the block."""
    register_model(ModelConfig(name=name, family="test", **{"size_divisor": 2, **config}))(
        lambda num_classes: SmallSegNet(num_classes)
    )
    try:
        yield name
    finally:
        unregister_model(name)


def small_model():
    torch.manual_seed(0)
    model = SmallSegNet()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def convert_float32(model, images, out, onnx_rewrites: bool = True):
    """The project's real chain (export, onnx2tf, TFLite converter, LiteRT) down to
    model_float32.tflite, with parity measured on ``images`` ((N, 3, H, W) tensor or array): the
    one way a test carries a model through, offline workaround included."""
    from seg2tflite.calibration import calibration_from_array
    from seg2tflite.converters import ConvertConfig, convert_model

    images = np.asarray(images, np.float32)
    config = ConvertConfig(
        input_size=images.shape[2:], variants=("float32",), parity_images=len(images), calib_min=1, onnx_rewrites=onnx_rewrites
    )
    calib = calibration_from_array(images, "test images", min_size=1)
    return convert_model(model.eval(), out, config, calib, log=None, progress=False)
