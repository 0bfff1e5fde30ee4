"""A ``torch.utils.data.Dataset`` view of a ``SegmentationDataset`` for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess


class TorchSegDataset(Dataset):
    """Yields ``(image float32 (3, H, W), mask int64 (H, W))`` after ``preprocess``.

    ``transform``, if given, is a joint augmentation applied to the raw item before preprocessing:
    it is called as ``transform(tv_tensors.Image, tv_tensors.Mask)`` (a torchvision.transforms.v2
    pipeline, so geometric ops move image and mask together) and must return the pair, the image
    still uint8 (a float image in 0..1 is accepted and scaled back).
    """

    def __init__(self, ds: SegmentationDataset, preprocess: Preprocess, transform: Callable | None = None):
        self.ds = ds
        self.preprocess = preprocess
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.ds[index]
        if self.transform is not None:
            image, mask = self._augment(image, mask)
        x, y = self.preprocess(image, mask)
        return torch.from_numpy(x), torch.from_numpy(y)

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from torchvision import tv_tensors

        # copies: the readers may hand out read-only arrays, which torch refuses to wrap silently
        img = tv_tensors.Image(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.array(mask, copy=True)))
        img, msk = self.transform(img, msk)
        img = torch.as_tensor(img)
        if img.is_floating_point():
            img = (img.clamp(0, 1) * 255).round()
        image = img.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        mask = torch.as_tensor(msk).to(torch.uint8)
        if mask.ndim == 3:  # (1, H, W) from some transforms
            mask = mask[0]
        return image, mask.numpy()
