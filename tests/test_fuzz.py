"""Fuzzing the loaders: corrupted checkpoints, images, masks, ONNX files and dataset folders.

Every loader must either return what it promises or raise ``UserError`` (the one clear line);
any other exception is a crash the user would see as a traceback. The corruptions are seeded, so
a failure reproduces.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seg2tflite.converters.onnx_export import load_onnx
from seg2tflite.data import SyntheticDataset, load_dataset, write_folder_dataset
from seg2tflite.data.readers import read_image, read_mask
from seg2tflite.data.spec import parse_synthetic_spec
from seg2tflite.errors import UserError
from seg2tflite.models.checkpoint import read_state_dict

CASES = 40


def _corruptions(data: bytes, seed: int):
    """Truncations, byte flips, random bytes and an empty file, all derived from ``seed``."""
    rng = np.random.default_rng(seed)
    for cut in sorted(set(rng.integers(0, len(data), CASES // 2).tolist())):
        yield f"truncated at {cut}", data[:cut]
    for _ in range(CASES // 2):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), 1 + int(rng.integers(0, 8))):
            flipped[i] ^= 1 << int(rng.integers(0, 8))
        yield "bytes flipped", bytes(flipped)
    yield "random bytes", rng.bytes(int(rng.integers(1, 5000)))
    yield "empty", b""


def _only_user_errors(load, path, what):
    try:
        return load(path)
    except UserError as e:
        assert str(path) in str(e) or path.name in str(e), f"{what}: the error does not name the file: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - this is the crash the test is looking for
        pytest.fail(f"{what}: {type(e).__name__}: {e}")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupted_checkpoints(tmp_path, suffix):
    from safetensors.torch import save_file

    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}
    good = tmp_path / f"good{suffix}"
    save_file(state, str(good)) if suffix == ".safetensors" else torch.save(state, good)
    for i, (what, data) in enumerate(_corruptions(good.read_bytes(), seed=1)):
        path = tmp_path / f"bad{i}{suffix}"
        path.write_bytes(data)
        state = _only_user_errors(read_state_dict, path, what)
        if state is not None:  # a flip that missed everything that matters
            assert all(isinstance(v, torch.Tensor) for v in state.values())


def _png(path, array, mode):
    Image.fromarray(array, mode=mode).save(path)
    return path.read_bytes()


def test_corrupted_images_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    image = _png(tmp_path / "i.png", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "RGB")
    mask = _png(tmp_path / "m.png", rng.integers(0, 8, (24, 24), dtype=np.uint8), "L")
    for kind, data, read in (("image", image, read_image), ("mask", mask, read_mask)):
        for i, (what, bad) in enumerate(_corruptions(data, seed=2)):
            path = tmp_path / f"{kind}{i}.png"
            path.write_bytes(bad)
            out = _only_user_errors(read, path, f"{kind} {what}")
            if out is not None:
                assert out.dtype == np.uint8 and out.shape[:2] == (24, 24)


def test_masks_of_the_wrong_dtype(tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(wide)  # 16-bit, beyond 8-bit class indices
    with pytest.raises(UserError, match="outside 0..255"):
        read_mask(wide)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), mode="RGB").save(colour)
    with pytest.raises(UserError, match="single-channel"):
        read_mask(colour)
    floats = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(floats)
    with pytest.raises(UserError, match="single-channel"):
        read_mask(floats)


def test_corrupted_onnx_files(tmp_path, offline_result):
    good = (offline_result[0].out_dir / "model.onnx").read_bytes()
    for i, (what, bad) in enumerate(_corruptions(good, seed=3)):
        path = tmp_path / f"bad{i}.onnx"
        path.write_bytes(bad)
        _only_user_errors(load_onnx, path, what)


def test_corrupted_dataset_folders(tmp_path):
    config = parse_synthetic_spec("synthetic:size=16,train=2,val=2,test=2")
    folder = write_folder_dataset(
        {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, tmp_path / "d", progress=False
    )
    good = (folder / "dataset.json").read_bytes()
    for what, bad in _corruptions(good, seed=4):
        (folder / "dataset.json").write_bytes(bad)
        try:
            dataset = load_dataset(f"folder:{folder}", "val")
            for i in range(len(dataset)):
                dataset[i]
        except UserError:
            pass
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"dataset.json {what}: {type(e).__name__}: {e}\n{bad[:200]!r}")
    (folder / "dataset.json").write_text(json.dumps({"classes": "not a list"}))
    with pytest.raises(UserError):
        load_dataset(f"folder:{folder}", "val")
