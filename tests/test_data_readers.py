"""Each dataset reader on a tiny fixture in its published layout, plus every bad-input error."""

import json

import numpy as np
import pytest
from PIL import Image

from seg2tflite.data import DATA_SPEC_HELP, KINDS, dataset_info, load_dataset, validate_dataset
from seg2tflite.data.readers import voc_colormap
from seg2tflite.errors import UserError

H, W = 32, 48


def _image(path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _mask(path, values, size=(H, W), palette=None):
    """A mask whose pixels cycle through ``values``; saved as mode L, or P with ``palette``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.resize(np.asarray(values, np.uint8), size[0] * size[1]).reshape(size)
    img = Image.fromarray(raw)
    if palette is not None:
        img = img.convert("P")
        img.putpalette([v for c in palette for v in c] + [0] * (768 - 3 * len(palette)))
        img.putdata(raw.ravel().tolist())  # keep the indices exactly
    img.save(path)
    return raw


def _mapped(raw, table):
    return np.vectorize(lambda v: table[int(v)])(raw).astype(np.uint8)


# --- folder ---------------------------------------------------------------------------------


def _folder(root, names=("a", "b"), values=(0, 1, 2, 255), meta=True):
    for i, n in enumerate(names):
        _image(root / "train" / "images" / f"{n}.jpg", i)
        _mask(root / "train" / "masks" / f"{n}.png", values)
    if meta:
        (root / "dataset.json").write_text(
            json.dumps({"name": "toy", "class_names": ["bg", "cat", "dog"], "palette": [[0, 0, 0], [1, 2, 3], [4, 5, 6]]})
        )
    return root


def test_folder_reads_names_and_pairs_by_stem(tmp_path):
    root = _folder(tmp_path / "ds")
    ds = load_dataset(f"folder:{root}", "train")
    assert ds.info.name == "toy" and ds.info.class_names == ("bg", "cat", "dog")
    assert ds.info.palette[1] == (1, 2, 3)
    assert [ds.item_name(i) for i in range(len(ds))] == ["a", "b"]
    image, mask = ds[1]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2, 255}
    assert dataset_info(f"folder:{root}").class_names == ("bg", "cat", "dog")


def test_folder_without_json_needs_num_classes(tmp_path):
    root = _folder(tmp_path / "ds", meta=False)
    with pytest.raises(UserError, match="pass num_classes"):
        load_dataset(f"folder:{root}", "train")
    ds = load_dataset(f"folder:{root}", "train", num_classes=3)
    assert ds.info.class_names == ("class_0", "class_1", "class_2")
    assert ds.info.palette == voc_colormap(3)
    with pytest.raises(UserError, match=r"label\(s\) 2 beyond the 2 classes"):
        load_dataset(f"folder:{root}", "train", num_classes=2)[0]


def test_folder_errors(tmp_path):
    root = _folder(tmp_path / "ds")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    with pytest.raises(UserError, match="'val' images folder does not exist"):
        load_dataset(f"folder:{root}", "val")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    with pytest.raises(UserError, match=r"val/images: no images in it"):
        load_dataset(f"folder:{root}", "val")
    _image(root / "val" / "images" / "lonely.png")
    with pytest.raises(UserError, match=r"lonely.png: image has no mask"):
        load_dataset(f"folder:{root}", "val")
    with pytest.raises(UserError, match="disagrees"):
        load_dataset(f"folder:{root}", "train", num_classes=5)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset.json: cannot parse"):
        load_dataset(f"folder:{root}", "train")
    (root / "dataset.json").write_text(json.dumps({"class_names": []}))
    with pytest.raises(UserError, match="class_names"):
        load_dataset(f"folder:{root}", "train")


def test_folder_bad_items_are_caught_per_item_and_by_validate(tmp_path):
    root = _folder(tmp_path / "ds", names=("a", "b", "c", "d", "e"))
    (root / "train" / "images" / "b.jpg").write_bytes(b"this is not a jpeg")
    _mask(root / "train" / "masks" / "c.png", (0, 1), size=(H, W + 1))
    _mask(root / "train" / "masks" / "d.png", (0, 1, 7))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "train" / "masks" / "e.png")
    ds = load_dataset(f"folder:{root}", "train")
    assert ds[0][0].shape == (H, W, 3)
    with pytest.raises(UserError, match=r"b.jpg: cannot read image"):
        ds[1]
    with pytest.raises(UserError, match=r"c.png: mask is 49x32 but its image c.jpg is 48x32"):
        ds[2]
    with pytest.raises(UserError, match=r"d.png: mask holds label\(s\) 7 beyond the 3 classes"):
        ds[3]
    with pytest.raises(UserError, match=r"e.png: mask is a RGB image"):
        ds[4]
    assert validate_dataset(ds, limit=1) == 1
    with pytest.raises(UserError, match="b.jpg"):
        validate_dataset(ds)


def test_unknown_kind_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        UserError, match="unknown dataset kind 'coco'; use one of synthetic, folder, ade20k, voc, cityscapes, camvid"
    ):
        load_dataset(f"coco:{tmp_path}", "train")
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("ade20k", "val")
    assert all(k in DATA_SPEC_HELP for k in KINDS)


# --- ADE20K ---------------------------------------------------------------------------------


def test_ade20k_maps_zero_to_ignore_and_shifts_labels(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = {}
    for folder, names in (("training", ("ADE_train_00000001", "ADE_train_00000002")), ("validation", ("ADE_val_00000001",))):
        for i, n in enumerate(names):
            _image(root / "images" / folder / f"{n}.jpg", i)
            raw[n] = _mask(root / "annotations" / folder / f"{n}.png", (0, 1, 2, 150))
    train = load_dataset(f"ade20k:{root}", "train")
    assert len(train) == 2 and train.info.num_classes == 150
    assert train.info.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert train.info.class_names[-1] == "flag" and len(set(train.info.palette)) > 140
    _, mask = train[0]
    table = {0: 255, 1: 0, 2: 1, 150: 149}
    assert np.array_equal(mask, _mapped(raw["ADE_train_00000001"], table))
    test = load_dataset(f"ade20k:{root}", "test")
    assert test.source_split == "validation" and test.item_name(0) == "ADE_val_00000001"
    _mask(root / "annotations" / "validation" / "ADE_val_00000001.png", (0, 151))
    with pytest.raises(UserError, match=r"ADE_val_00000001.png: mask holds label\(s\) 151"):
        load_dataset(f"ade20k:{root}", "val")[0]
    with pytest.raises(UserError, match="ADE20K images folder does not exist"):
        load_dataset(f"ade20k:{tmp_path}", "train")


# --- VOC ------------------------------------------------------------------------------------


def test_voc_reads_palette_indices_and_keeps_255(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    root = devkit / "VOC2012"
    palette = voc_colormap(256)
    names = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    raw = {}
    for split, ns in names.items():
        for i, n in enumerate(ns):
            _image(root / "JPEGImages" / f"{n}.jpg", i)
            raw[n] = _mask(root / "SegmentationClass" / f"{n}.png", (0, 15, 255, 20), palette=palette)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ns) + "\n")
    assert Image.open(root / "SegmentationClass" / "2007_000032.png").mode == "P"
    for path in (root, devkit):
        ds = load_dataset(f"voc:{path}", "train")
        assert len(ds) == 2 and ds.info.num_classes == 21 and ds.info.class_names[15] == "person"
        _, mask = ds[0]
        # the index, not a colour: person is 15 although its colour is (192, 128, 128)
        assert np.array_equal(mask, raw["2007_000032"])
        assert set(np.unique(mask)) == {0, 15, 20, 255}
    assert load_dataset(f"voc:{root}", "test").item_name(0) == "2007_000033"
    _mask(root / "SegmentationClass" / "2007_000033.png", (0, 21), palette=palette)
    with pytest.raises(UserError, match=r"2007_000033.png: mask holds label\(s\) 21 beyond the 21 classes"):
        load_dataset(f"voc:{root}", "val")[0]
    (root / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(UserError, match=r"2007_000039.jpg: image has no mask"):
        load_dataset(f"voc:{root}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no JPEGImages folder"):
        load_dataset(f"voc:{tmp_path / 'empty'}", "train")


# --- Cityscapes -----------------------------------------------------------------------------


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    raw = {}
    for split, city, n in (
        ("train", "aachen", "aachen_000000_000019"),
        ("train", "bochum", "bochum_000000_000313"),
        ("val", "frankfurt", "frankfurt_000000_000294"),
    ):
        _image(root / "leftImg8bit" / split / city / f"{n}_leftImg8bit.png")
        raw[n] = _mask(root / "gtFine" / split / city / f"{n}_gtFine_labelIds.png", (7, 26, 0, 33, 4, 24, 9))
        _mask(root / "gtFine" / split / city / f"{n}_gtFine_color.png", (1,))  # published beside it; not read
    ds = load_dataset(f"cityscapes:{root}", "train")
    assert len(ds) == 2 and ds.info.num_classes == 19
    assert ds.info.class_names[0] == "road" and ds.info.class_names[13] == "car"
    assert [ds.item_name(i) for i in range(2)] == ["aachen_000000_000019", "bochum_000000_000313"]
    _, mask = ds[0]
    table = {7: 0, 26: 13, 0: 255, 33: 18, 4: 255, 24: 11, 9: 255}
    assert np.array_equal(mask, _mapped(raw["aachen_000000_000019"], table))
    assert load_dataset(f"cityscapes:{root}", "test").item_name(0) == "frankfurt_000000_000294"
    (root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match=r"frankfurt_000000_000294_leftImg8bit.png: image has no mask"):
        load_dataset(f"cityscapes:{root}", "val")


# --- CamVid ---------------------------------------------------------------------------------


def test_camvid_void_becomes_ignore(tmp_path):
    root = tmp_path / "CamVid"
    raw = {}
    for split, names in (("train", ("0001TP_006690", "0001TP_006720")), ("val", ("0016E5_07959",)), ("test", ("0001TP_008550",))):
        for i, n in enumerate(names):
            _image(root / split / f"{n}.png", i)
            raw[n] = _mask(root / f"{split}annot" / f"{n}.png", (0, 3, 10, 11))
    ds = load_dataset(f"camvid:{root}", "train")
    assert len(ds) == 2 and ds.info.num_classes == 11 and ds.info.class_names[3] == "Road"
    _, mask = ds[0]
    assert np.array_equal(mask, _mapped(raw["0001TP_006690"], {0: 0, 3: 3, 10: 10, 11: 255}))
    assert len(load_dataset(f"camvid:{root}", "test")) == 1
    _mask(root / "valannot" / "0016E5_07959.png", (0, 12))
    with pytest.raises(UserError, match=r"0016E5_07959.png: mask holds label\(s\) 12 beyond the 11 classes"):
        load_dataset(f"camvid:{root}", "val")[0]
    with pytest.raises(UserError, match="CamVid train folder does not exist"):
        load_dataset(f"camvid:{tmp_path}", "train")
