"""calibration/: stratified seeded selection, evaluation preprocessing, refusal of bad data."""

import numpy as np
import pytest

from seg2tflite.calibration import (
    build_calibration_set,
    calibration_from_array,
    check_disjoint,
    class_histogram,
    select_calibration,
)
from seg2tflite.data.base import DatasetInfo, SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError

INFO = DatasetInfo("toy", ("bg", "common", "rare", "unseen"), ((0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)))


class ToyDataset(SegmentationDataset):
    """``n`` images; class 1 in every other image, class 2 only in image ``rare_at``."""

    def __init__(self, n=40, split="train", rare_at=(23,), size=(20, 24), channels=3, constant=False, name="toy"):
        self.n, self.split, self.rare_at, self.size, self.channels, self.constant = n, split, rare_at, size, channels, constant
        self.info = DatasetInfo(name, INFO.class_names, INFO.palette)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        h, w = self.size
        shape = (h, w, self.channels) if self.channels else (h, w)
        image = np.full(shape, 7, np.uint8) if self.constant else rng.integers(0, 256, shape, dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if i % 2:
            mask[:10, :10] = 1
        if i in self.rare_at:
            mask[5:7, 5:7] = 2
        mask[0, 0] = 255
        return image, mask


PRE = Preprocess((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_histogram_ignores_255():
    mask = np.array([[0, 1, 255], [1, 1, 9]])
    assert class_histogram(mask, 4).tolist() == [1, 3, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_rare_class_always_selected(seed):
    ds = ToyDataset()
    picked = select_calibration(ds, 4, seed=seed, progress=False)
    assert len(picked) == len(set(picked)) == 4
    assert 23 in picked  # the only image with class 2; random 4 of 40 would miss it 90% of the time
    assert any(i % 2 for i in picked)  # class 1 covered too


def test_selection_is_seeded():
    ds = ToyDataset()
    a = select_calibration(ds, 10, seed=5, progress=False)
    assert a == select_calibration(ds, 10, seed=5, progress=False)
    assert a != select_calibration(ds, 10, seed=6, progress=False)


def test_exclude_and_short_split():
    ds = ToyDataset(n=12)
    picked = select_calibration(ds, 20, seed=0, exclude=[23, 0, 1], progress=False)
    assert sorted(picked) == list(range(2, 12))  # fewer than asked: everything not excluded


def test_calibration_set_uses_evaluation_preprocessing():
    ds = ToyDataset()
    calib = build_calibration_set(ds, PRE, size=8, seed=0, min_size=8, progress=False)
    assert calib.images.shape == (8, 3, 16, 16) and calib.images.dtype == np.float32
    for x, i in zip(calib.images, calib.indices):
        assert np.array_equal(x, PRE.image(ds[i][0]))
    assert calib.names == tuple(ds.item_name(i) for i in calib.indices)
    assert calib.source == "toy:train"
    batches = list(calib.representative_dataset()())
    assert len(batches) == 8
    assert batches[0][0].shape == (1, 16, 16, 3)
    assert np.array_equal(batches[0][0][0], calib.images[0].transpose(1, 2, 0))


def test_refuses_bad_data():
    with pytest.raises(UserError, match="empty"):
        build_calibration_set(ToyDataset(n=0), PRE, progress=False)
    with pytest.raises(UserError, match="fewer than the minimum 8"):
        build_calibration_set(ToyDataset(n=5), PRE, size=200, min_size=8, progress=False)
    with pytest.raises(UserError, match=r"expected \(H, W, 3\)"):
        build_calibration_set(ToyDataset(channels=4), PRE, size=8, progress=False)
    with pytest.raises(UserError, match=r"expected \(H, W, 3\)"):
        build_calibration_set(ToyDataset(channels=0), PRE, size=8, progress=False)
    with pytest.raises(UserError, match="one value per channel"):
        build_calibration_set(ToyDataset(constant=True), PRE, size=8, progress=False)


def test_array_checks():
    good = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    assert len(calibration_from_array(good, "calib.npy")) == 8
    with pytest.raises(UserError, match="calib.npy: calibration data is empty"):
        calibration_from_array(np.zeros((0, 3, 16, 16)), "calib.npy")
    with pytest.raises(UserError, match="only 4 calibration images"):
        calibration_from_array(good[:4], "calib.npy")
    with pytest.raises(UserError, match=r"shape \(1, 16, 16\)"):
        calibration_from_array(good[:, :1], "calib.npy")
    with pytest.raises(UserError, match="NaN"):
        calibration_from_array(np.where(good > 2, np.nan, good), "calib.npy")
    with pytest.raises(UserError, match="one value per channel"):
        calibration_from_array(np.ones_like(good), "calib.npy")


def test_disjoint_from_evaluation():
    check_disjoint(ToyDataset(split="train"), ToyDataset(split="val"))
    check_disjoint(ToyDataset(split="val"), ToyDataset(split="val", name="other"))
    with pytest.raises(UserError, match="also the evaluation split"):
        check_disjoint(ToyDataset(split="val"), ToyDataset(split="val"))
