"""Images as phones and attackers hand them over (issue 28, items 4 and 9): EXIF-rotated JPEGs
are read upright like their masks, a few hundred bytes claiming 100000x100000 pixels is one line."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from seg2tflite.data import load_dataset
from seg2tflite.data.readers import read_image, read_mask
from seg2tflite.errors import UserError

H, W = 16, 24  # not square: a rotation that is not undone changes the shape


def _upright():
    image = np.zeros((H, W, 3), np.uint8)
    image[: H // 2, : W // 3] = (250, 20, 20)  # a red block top left: where it ends up says the orientation
    image[H // 2 :, W // 2 :] = (20, 20, 250)
    return image


def _save_rotated(array, path, orientation=6, **kwargs):
    """Store ``array`` as a phone does: the pixels rotated, the EXIF Orientation tag saying how to show them."""
    stored = Image.fromarray(array)
    stored = {6: stored.transpose(Image.Transpose.ROTATE_90), 3: stored.transpose(Image.Transpose.ROTATE_180),
              8: stored.transpose(Image.Transpose.ROTATE_270)}[orientation]  # fmt: skip
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, **kwargs)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_jpeg_is_read_upright(tmp_path, orientation):
    upright = _upright()
    read = read_image(_save_rotated(upright, tmp_path / "phone.jpg", orientation, quality=95))
    assert read.shape == upright.shape
    assert np.abs(read.astype(int) - upright).mean() < 8  # JPEG's loss, not a rotation


def test_a_rotated_photo_and_its_upright_mask_line_up_in_a_dataset(tmp_path):
    root = tmp_path / "d"
    for split in ("val",):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
    upright = _upright()
    _save_rotated(upright, root / "val" / "images" / "a.jpg", 6, quality=95)
    mask = (upright[..., 2] > 128).astype(np.uint8)  # class 1 where the blue block is
    Image.fromarray(mask, mode="L").save(root / "val" / "masks" / "a.png")
    image, read_mask_ = load_dataset(f"folder:{root}", "val", num_classes=2)[0]
    assert image.shape[:2] == read_mask_.shape == (H, W)
    assert ((image[..., 2] > 128) == (read_mask_ == 1)).mean() > 0.98


def test_a_mask_with_an_orientation_tag_turns_with_its_image(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[:4, :5] = 3
    stored = _save_rotated(mask, tmp_path / "m.png", 8)
    assert np.array_equal(read_mask(stored), mask)


def _png_claiming(path, width, height, mode=2):
    """A valid PNG header claiming ``width`` x ``height`` pixels, and almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("size", [(100000, 100000), (10000, 10000)])  # beyond PIL's error, and its warning, limit
def test_a_decompression_bomb_is_one_line(tmp_path, size):
    with pytest.raises(UserError, match="too many to read safely") as e:
        read_image(_png_claiming(tmp_path / "bomb.png", *size))
    assert "bomb.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="mask claims more than"):
        read_mask(_png_claiming(tmp_path / "bomb_mask.png", *size, mode=0))
