"""The synthetic dataset: determinism, disjoint splits, content, and the folder round trip."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from seg2tflite.data import (
    SyntheticConfig,
    SyntheticDataset,
    load_dataset,
    validate_dataset,
    write_folder_dataset,
)
from seg2tflite.data.synthetic import CLASS_NAMES, MIN_VISIBLE_PIXELS
from seg2tflite.errors import UserError

SMALL = SyntheticConfig(num_train=60, num_val=20, num_test=20, image_size=(64, 64), seed=5)


def _digest(image, mask):
    return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()


def test_items_have_the_promised_types():
    ds = SyntheticDataset("train", SMALL)
    image, mask = ds[0]
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert mask.dtype == np.uint8 and mask.shape == (64, 64)
    assert len(ds) == 60 and ds.info.class_names == CLASS_NAMES and len(CLASS_NAMES) >= 6
    assert validate_dataset(ds, limit=10) == 10
    assert SyntheticDataset("train", SyntheticConfig(image_size=(48, 80)))[0][0].shape == (48, 80, 3)


def test_same_seed_same_bytes_other_seed_differs():
    a, b = SyntheticDataset("val", SMALL), SyntheticDataset("val", SMALL)
    other = SyntheticDataset("val", dataclasses.replace(SMALL, seed=6))
    for i in range(5):
        assert _digest(*a[i]) == _digest(*b[i])
        assert _digest(*a[i]) != _digest(*other[i])


def test_any_item_is_reproducible_alone():
    ds = SyntheticDataset("train", SMALL)
    late_first = _digest(*ds[17])
    for i in range(17):
        ds[i]
    assert _digest(*ds[17]) == late_first
    assert _digest(*ds[-1]) == _digest(*ds[59])
    with pytest.raises(IndexError):
        ds[60]


def test_splits_are_disjoint():
    seen = {}
    for split in ("train", "val", "test"):
        ds = SyntheticDataset(split, SMALL)
        for i in range(20):
            d = _digest(*ds[i])
            assert d not in seen, f"{split}[{i}] repeats {seen.get(d)}"
            seen[d] = f"{split}[{i}]"


def test_all_classes_appear_and_images_hold_several_objects():
    ds = SyntheticDataset("train", SyntheticConfig(image_size=(96, 96), seed=1))
    pixels = np.zeros(len(CLASS_NAMES), np.int64)
    for i in range(50):
        _, mask = ds[i]
        pixels += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
        counts = np.bincount(ds.instances(i).ravel())[1:]
        assert (counts >= MIN_VISIBLE_PIXELS).sum() >= 2, f"item {i} shows fewer than 2 objects"
    assert (pixels > 0).all(), dict(zip(CLASS_NAMES, pixels))
    # objects are a real share of the image, not specks on a background
    assert 0.05 < 1 - pixels[0] / pixels.sum() < 0.6


def _colour_only_accuracy(colour_hint):
    """Mean per-class accuracy, on val object pixels, of the best colour-only rule (Bayes on an
    8x8x8 RGB histogram fitted on train pixels); chance is 1/7."""
    cfg = SyntheticConfig(num_train=60, num_val=25, image_size=(64, 64), seed=2, colour_hint=colour_hint)
    k = len(CLASS_NAMES)
    hist = np.ones((k, 512))

    def bins(image):
        b = (image // 32).astype(np.int64)
        return (b[..., 0] * 8 + b[..., 1]) * 8 + b[..., 2]

    train = SyntheticDataset("train", cfg)
    for i in range(len(train)):
        image, mask = train[i]
        np.add.at(hist, (mask.ravel().astype(np.int64), bins(image).ravel()), 1)
    val = [SyntheticDataset("val", cfg)[i] for i in range(cfg.num_val)]
    per_class = []
    for c in range(1, k):
        hit = total = 0
        for image, mask in val:
            sel = mask == c
            hit += (hist[1:, bins(image)[sel]].argmax(0) + 1 == c).sum()
            total += sel.sum()
        per_class.append(hit / max(total, 1))
    return float(np.mean(per_class))


def test_colour_is_a_hint_not_an_answer():
    # With the default hint colour helps (above chance) but leaves most object pixels wrong;
    # with no hint it is near chance; with a full hint (one tint per class, textures still mixing
    # in other colours) it gets most right, which shows the measure can tell.
    default = _colour_only_accuracy(SyntheticConfig().colour_hint)
    assert 1 / 7 < default < 0.5
    assert _colour_only_accuracy(0.0) < 0.25
    assert _colour_only_accuracy(1.0) > 0.6


def test_write_then_read_back_through_folder_spec(tmp_path):
    cfg = SyntheticConfig(num_train=4, num_val=3, num_test=2, image_size=(32, 48), seed=9)
    splits = {s: SyntheticDataset(s, cfg) for s in ("train", "val", "test")}
    out = write_folder_dataset(splits, tmp_path / "syn", progress=False, source=cfg.to_spec())
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["class_names"] == list(CLASS_NAMES) and meta["splits"] == {"train": 4, "val": 3, "test": 2}
    for split, ds in splits.items():
        back = load_dataset(f"folder:{out}", split)
        assert back.info == ds.info  # names, palette and ignore index survive
        assert len(back) == len(ds)
        for i in range(len(ds)):
            assert back.item_name(i) == ds.item_name(i)
            image, mask = ds[i]
            image2, mask2 = back[i]
            assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
    # rewriting a dataset folder replaces it whole; a non-dataset folder is refused
    write_folder_dataset({"val": splits["val"]}, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "val"]
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a folder dataset"):
        write_folder_dataset(splits, tmp_path / "precious", progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary left behind"


def test_spec_options_and_errors():
    ds = load_dataset("synthetic:seed=3,size=40x56,train=7,val=2,max_objects=3", "train")
    assert len(ds) == 7 and ds[0][0].shape == (40, 56, 3) and ds.config.seed == 3
    assert load_dataset(ds.config.to_spec(), "val").config == ds.config
    assert load_dataset("synthetic", "test").config == SyntheticConfig()
    with pytest.raises(UserError, match="bad option 'colour=red'"):
        load_dataset("synthetic:colour=red", "train")
    with pytest.raises(UserError, match="size='big'"):
        load_dataset("synthetic:size=big", "train")
    with pytest.raises(UserError, match="too small"):
        load_dataset("synthetic:size=8", "train")
    with pytest.raises(UserError, match="min_objects"):
        load_dataset("synthetic:min_objects=4,max_objects=3", "train")
    with pytest.raises(UserError, match="split 'holdout'"):
        load_dataset("synthetic", "holdout")


def test_torch_dataset_preprocesses_and_augments_jointly():
    import torch
    from torchvision.transforms import v2

    from seg2tflite.data import Preprocess, TorchSegDataset

    ds = SyntheticDataset("val", SMALL)
    pre = Preprocess((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = TorchSegDataset(ds, pre)[3]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (32, 32)
    image, mask = ds[3]
    assert np.allclose(x.numpy(), pre.image(image)) and np.array_equal(y.numpy(), pre.mask(mask))
    # a joint flip moves image and mask together
    flipped = TorchSegDataset(ds, Preprocess((64, 64), (0, 0, 0), (1, 1, 1)), v2.RandomHorizontalFlip(p=1.0))
    fx, fy = flipped[3]
    assert np.array_equal(fy.numpy(), mask[:, ::-1].astype(np.int64))
    assert np.allclose(fx.numpy(), image[:, ::-1].transpose(2, 0, 1) / 255.0)
    # a pipeline that turns the image to float in 0..1 comes back as the same uint8 image
    to_float = TorchSegDataset(ds, Preprocess((64, 64), (0, 0, 0), (1, 1, 1)), v2.ToDtype(torch.float32, scale=True))
    assert np.allclose(to_float[3][0].numpy(), image.transpose(2, 0, 1) / 255.0)
