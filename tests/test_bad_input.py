"""Bad input through the real command line: one clear line, exit 2, no traceback, nothing half-written.

Each case feeds ``seg2tflite`` one broken thing (a checkpoint, an ONNX file, calibration data, a
dataset, an output folder) and checks the answer names it and says what to do. None of them gets
as far as onnx2tf, so the whole table runs in seconds.
"""

import errno
import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from seg2tflite.cli import main
from seg2tflite.data import SyntheticDataset, write_folder_dataset
from seg2tflite.data.spec import parse_synthetic_spec
from seg2tflite.models import create_model
from seg2tflite.models.checkpoint import save_checkpoint

SYNTHETIC = "synthetic:size=32,train=16,val=8,test=8"


def _fails(capsys, argv, *expected) -> str:
    """Run the command: exit 2, no traceback, and one error line (last on stderr) holding every ``expected``."""
    code = main(argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("seg2tflite: error: ")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.rstrip().endswith(errors[0])  # progress bars may come first; the error is last
    for text in expected:
        assert str(text) in errors[0], (text, errors[0])
    return errors[0]


def _nothing_written(out) -> None:
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.fixture(scope="module")
def segformer_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(create_model("segformer_b0", num_classes=8), tmp_path_factory.mktemp("ckpt") / "b0.safetensors")


def _convert(checkpoint, out, model="segformer_b0", *extra):
    return [
        "convert", "--model", model, "--checkpoint", str(checkpoint), "--input-size", "32", "32",
        "--calib-data", SYNTHETIC, "--calib-size", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def test_truncated_checkpoint(capsys, tmp_path, segformer_checkpoint):
    broken = tmp_path / "b0.safetensors"
    broken.write_bytes(segformer_checkpoint.read_bytes()[: segformer_checkpoint.stat().st_size // 2])
    (tmp_path / "b0.json").write_text(segformer_checkpoint.with_suffix(".json").read_text())
    _fails(capsys, _convert(broken, tmp_path / "out"), broken, "not a readable weights file")
    _nothing_written(tmp_path / "out")


def test_random_bytes_checkpoint(capsys, tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    _fails(capsys, _convert(junk, tmp_path / "out"), junk)
    _nothing_written(tmp_path / "out")


class _RunsCode:
    """Unpickling this would create the marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused_never_run(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}))
    _fails(capsys, _convert(evil, tmp_path / "out"), evil, "refused to load")
    assert not marker.exists()
    _nothing_written(tmp_path / "out")


def test_checkpoint_of_another_architecture(capsys, tmp_path, segformer_checkpoint):
    line = _fails(
        capsys, _convert(segformer_checkpoint, tmp_path / "out", "deeplabv3plus_mobilenetv2", "--num-classes", "8"),
        segformer_checkpoint, "does not fit deeplabv3plus_mobilenetv2", "missing keys",
    )  # fmt: skip
    assert "Check --model and --num-classes" in line
    _nothing_written(tmp_path / "out")


def test_checkpoint_with_another_class_count(capsys, tmp_path, segformer_checkpoint):
    # Refused against the data before the model is built: with --num-classes 8 the checkpoint fits.
    _fails(
        capsys,
        _convert(segformer_checkpoint, tmp_path / "out", "segformer_b0", "--num-classes", "5"),
        "--num-classes 5",
        "has 8 classes",
    )
    _nothing_written(tmp_path / "out")


def _onnx_file(path, nodes, dims=(1, 3, 8, 8), out_channels=3, opset=17, extra_opsets=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], out_channels, *dims[2:]])
    graph = helper.make_graph(nodes, "g", [x], [y])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


@pytest.mark.chain
def test_onnx_op_the_chain_cannot_carry(capsys, tmp_path):
    node = helper.make_node("MaxUnpoolWithMagic", ["input"], ["logits"], name="/decoder/unpool", domain="custom.ops")
    path = _onnx_file(tmp_path / "custom.onnx", [node], extra_opsets=["custom.ops"])
    argv = ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")]
    _fails(capsys, argv, path, "'/decoder/unpool'", "custom.ops::MaxUnpoolWithMagic", "cannot convert")
    _nothing_written(tmp_path / "out")


def test_onnx_with_dynamic_input_needs_input_size(capsys, tmp_path):
    node = helper.make_node("Identity", ["input"], ["logits"], name="id")
    path = _onnx_file(tmp_path / "dynamic.onnx", [node], dims=("batch", 3, "height", "width"))
    argv = ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")]
    _fails(capsys, argv, path, "dynamic dimensions", "--input-size H W")
    _nothing_written(tmp_path / "out")


def test_not_an_onnx_file(capsys, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage" * 50)
    _fails(capsys, ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")], path)
    _nothing_written(tmp_path / "out")


def test_calibration_set_too_small(capsys, tmp_path, segformer_checkpoint):
    _fails(
        capsys, _convert(segformer_checkpoint, tmp_path / "out", "segformer_b0", "--calib-size", "2"), "--calib-size", "at least"
    )
    _nothing_written(tmp_path / "out")


class _Constant(SyntheticDataset):
    """Synthetic masks on images that are all one grey value."""

    def __getitem__(self, index):
        image, mask = super().__getitem__(index)
        return np.full_like(image, 128), mask


@pytest.mark.chain
def test_calibration_images_all_one_value(capsys, tmp_path, segformer_checkpoint):
    config = parse_synthetic_spec(SYNTHETIC)
    data = write_folder_dataset({s: _Constant(s, config) for s in ("train", "val")}, tmp_path / "grey", progress=False)
    argv = _convert(segformer_checkpoint, tmp_path / "out")
    argv[argv.index("--calib-data") + 1] = f"folder:{data}"
    _fails(capsys, argv, "one value per channel")
    _nothing_written(tmp_path / "out")


@pytest.fixture
def folder(tmp_path):
    config = parse_synthetic_spec("synthetic:size=16,train=4,val=4,test=4")
    return write_folder_dataset(
        {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, tmp_path / "d", progress=False
    )


def test_mask_label_beyond_the_classes(capsys, folder):
    mask = folder / "val" / "masks" / "val_000002.png"
    Image.fromarray(np.full((16, 16), 9, np.uint8), mode="L").save(mask)
    _fails(capsys, ["data", "check", "--data", f"folder:{folder}"], mask, "9")


def test_mask_of_another_size(capsys, folder):
    mask = folder / "val" / "masks" / "val_000001.png"
    Image.fromarray(np.zeros((8, 16), np.uint8), mode="L").save(mask)
    _fails(capsys, ["data", "check", "--data", f"folder:{folder}"], "val_000001")


def test_unreadable_image(capsys, folder):
    image = folder / "val" / "images" / "val_000003.png"
    image.write_bytes(image.read_bytes()[:40])
    _fails(capsys, ["data", "check", "--data", f"folder:{folder}"], image)


def test_empty_split(capsys, folder, tmp_path):
    for f in (folder / "test" / "images").iterdir():
        f.unlink()
    for f in (folder / "test" / "masks").iterdir():
        f.unlink()
    _fails(capsys, ["data", "check", "--data", f"folder:{folder}", "--split", "test"], "test")


def test_output_folder_blocked_by_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails(capsys, ["data", "synthetic", "--out", str(blocker / "data"), "--num-train", "2", "--num-val", "1", "--num-test", "1"])
    assert blocker.read_text() == "not a folder"


def test_disk_full_mid_write_keeps_nothing(capsys, tmp_path, monkeypatch):
    saved = []
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if len(saved) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "data"
    argv = ["data", "synthetic", "--out", str(out), "--num-train", "8", "--num-val", "2", "--num-test", "2"]
    _fails(capsys, argv, "no space left on the device", "--out")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too
