"""ConfusionMatrix / SegMetrics against small cases worked out by hand."""

import math

import numpy as np
import pytest
import torch

from seg2tflite.metrics import ConfusionMatrix


def test_hand_computed_three_classes_with_ignore():
    # target: 0 0 1 1 2 255   pred: 0 1 1 1 0 2   -> the 255 pixel is dropped, 5 pixels count.
    # rows = target: t0 -> {p0: 1, p1: 1}, t1 -> {p1: 2}, t2 -> {p0: 1}
    # class 0: TP 1, FP 1 (t2->p0), FN 1 (t0->p1) -> IoU 1/3
    # class 1: TP 2, FP 1 (t0->p1), FN 0          -> IoU 2/3
    # class 2: TP 0, FP 0, FN 1                   -> IoU 0
    # mIoU = (1/3 + 2/3 + 0) / 3 = 1/3; pixel acc = 3/5; class acc = (1/2 + 1 + 0) / 3 = 1/2
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 1, 0, 2]), np.array([0, 0, 1, 1, 2, 255]))
    m = cm.compute()
    assert np.array_equal(cm.mat, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert m.per_class_iou == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert m.miou == pytest.approx(1 / 3)
    assert m.pixel_accuracy == pytest.approx(0.6)
    assert m.mean_class_accuracy == pytest.approx(0.5)
    assert m.per_class_accuracy == pytest.approx((0.5, 1.0, 0.0))
    assert m.num_pixels == 5


def test_class_absent_everywhere_is_nan_and_skipped():
    # Same pixels as above with a 4th class that appears in neither: its IoU is NaN and the
    # mean stays 1/3 (over the 3 classes that appear), not (1/3 + 2/3 + 0 + 0) / 4.
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1, 1, 0, 2]), np.array([0, 0, 1, 1, 2, 255]))
    m = cm.compute()
    assert math.isnan(m.per_class_iou[3])
    assert math.isnan(m.per_class_accuracy[3])
    assert m.miou == pytest.approx(1 / 3)
    assert m.as_dict()["per_class_iou"][3] is None


def test_class_only_predicted_counts_as_zero():
    # target 0 0, pred 0 2 (K=3): class 0 IoU = 1 / (1 + 0 + 1) = 1/2; class 1 in neither -> NaN;
    # class 2 predicted but never true -> IoU 0 / 1 = 0 and counts. mIoU = (1/2 + 0) / 2 = 1/4.
    # Class accuracy only over target classes: class 0 -> 1/2. Pixel accuracy 1/2.
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 2]]), np.array([[0, 0]]))
    m = cm.compute()
    assert m.per_class_iou[0] == pytest.approx(0.5)
    assert math.isnan(m.per_class_iou[1])
    assert m.per_class_iou[2] == 0.0
    assert m.miou == pytest.approx(0.25)
    assert m.mean_class_accuracy == pytest.approx(0.5)
    assert m.pixel_accuracy == pytest.approx(0.5)


def test_predictions_out_of_range_count_as_wrong():
    # K=2, target 0 1 1, pred 0 5 -1: both class-1 pixels are misses and hit no class.
    # class 0: TP 1, FP 0, FN 0 -> 1; class 1: TP 0, FN 2, FP 0 -> 0; mIoU 1/2; pixel acc 1/3.
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 5, -1]), np.array([0, 1, 1]))
    m = cm.compute()
    assert m.per_class_iou == pytest.approx((1.0, 0.0))
    assert m.miou == pytest.approx(0.5)
    assert m.pixel_accuracy == pytest.approx(1 / 3)
    assert m.num_pixels == 3


def test_all_ignored_gives_nan_not_an_error():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([255, 255]))
    m = cm.compute()
    assert m.num_pixels == 0
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy)
    assert m.as_dict()["miou"] is None


def test_streaming_equals_one_update_and_merge_equals_both():
    rng = np.random.default_rng(0)
    k = 5
    pred = rng.integers(-1, k + 1, (6, 17, 23))
    target = rng.integers(0, k, (6, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    whole = ConfusionMatrix(k)
    whole.update(pred, target)
    streamed = ConfusionMatrix(k)
    for p, t in zip(pred, target):
        streamed.update(p, t)
    assert np.array_equal(streamed.mat, whole.mat)
    assert np.array_equal(streamed.out_of_range, whole.out_of_range)
    a, b = ConfusionMatrix(k), ConfusionMatrix(k)
    a.update(pred[:2], target[:2])
    b.update(pred[2:], target[2:])
    merged = a.merge(b)
    assert merged.compute() == whole.compute()
    # pixel accuracy counted directly
    keep = target != 255
    assert whole.compute().pixel_accuracy == pytest.approx((pred[keep] == target[keep]).mean())


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 3, (2, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
    assert np.array_equal(a.mat, b.mat)


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="label 7"):
        cm.update(np.zeros(2, int), np.array([0, 7]))
    with pytest.raises(TypeError, match="integer"):
        cm.update(np.zeros(2, np.float32), np.zeros(2, int))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))


def test_as_dict_with_names():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    d = cm.compute().as_dict(("bg", "fg"))
    # class 0: TP 1, FN 1 -> 1/2; class 1: FP 1 -> 0; mIoU 1/4
    assert d["per_class_iou"] == {"bg": 0.5, "fg": 0.0}
    assert d["miou"] == pytest.approx(0.25)
