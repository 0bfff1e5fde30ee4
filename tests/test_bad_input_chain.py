"""Hostile input through the whole chain (issue 19): TensorFlow, onnx2tf, the TFLite converter
and LiteRT. A real native crash fails only its variant; SIGTERM and a full disk leave nothing
behind; a re-used --out keeps nothing of the run before; --mean/--std are honoured."""

import pytest
import torch
from hostile import blob_folder, fails

from seg2tflite.app.cli import main

pytestmark = pytest.mark.chain


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return blob_folder(tmp_path_factory.mktemp("blobs") / "blobs")


@pytest.mark.parametrize("command", ["evaluate", "bench"])
def test_a_tflite_at_another_input_size(command, capsys, offline_result, blobs):
    tflite = offline_result[0].out_dir / "model_float32.tflite"
    argv = [command, "--artifact", str(tflite), "--input-size", "64", "64"]
    argv += ["--data", f"folder:{blobs}", "--workers", "1"] if command == "evaluate" else ["--runs", "1"]
    fails(capsys, argv, "model_float32.tflite", "takes 32x48 images, not 64x64", "--input-size 32 48")


def _small_convert(out, data, *extra, model="hostile_small"):
    return ["convert", "--model", model, "--calib-data", f"folder:{data}", "--calib-size", "8", "--parity-images", "4",
            "--input-size", "32", "48", "--out", str(out), *extra]  # fmt: skip


def test_a_reused_out_keeps_nothing_of_the_run_before(tmp_path, blobs, capsys):
    """Seed 0 with two variants, then seed 1 with one, then a checkpoint: each run's folder holds
    its own files only, and the user's own files in it (``.notes.tmp`` too) are never touched."""
    import json
    import shutil

    from seg2tflite.converters.stages import ConversionDir

    from small_chain import registered_small

    out = tmp_path / "out"
    out.mkdir()
    (out / ".notes.tmp").mkdir()
    (out / "notes.txt").write_text("mine")
    with registered_small("hostile_small"):
        assert main(_small_convert(out, blobs, "--variants", "float32", "dynamic_int8")) == 0
        seed0 = (out / "model.safetensors").read_bytes()
        assert main(_small_convert(out, blobs, "--variants", "float32", "--seed", "1")) == 0
        assert not (out / "model_dynamic_int8.tflite").exists()
        assert (out / "model.safetensors").read_bytes() != seed0
        stages = json.loads((out / "stages.json").read_text())["stages"]
        manifest = json.loads((out / "manifest.json").read_text())
        assert "dynamic_int8" not in stages and "dynamic_int8" not in manifest["stage_keys"]
        assert not any("dynamic_int8" in name for name in manifest["artifacts"])
        checkpoint = shutil.copy(out / "model.safetensors", tmp_path / "trained.safetensors")
        shutil.copy(out / "model.json", tmp_path / "trained.json")
        assert main(_small_convert(out, blobs, "--variants", "float32", "--checkpoint", str(checkpoint))) == 0
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()  # the seed's weights
    assert ConversionDir(out).checkpoint() == checkpoint
    assert (out / "notes.txt").read_text() == "mine" and (out / ".notes.tmp").is_dir()
    assert "removed, left by an earlier conversion" in capsys.readouterr().out


def test_mean_and_std_are_honoured_with_model(tmp_path, blobs):
    import json

    from small_chain import registered_small

    out = tmp_path / "out"
    with registered_small("hostile_small"):
        argv = _small_convert(out, blobs, "--variants", "float32", "--mean", "0.1", "0.2", "0.3", "--std", "0.5", "0.6", "0.7")
        assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["mean"] == [0.1, 0.2, 0.3] and manifest["preprocessing"]["std"] == [0.5, 0.6, 0.7]


class ResNetStem(torch.nn.Module):
    """torchvision ResNet-18's stem and first stage and a 1x1 head, its max pool padded by hand
    with float32's lowest value (what onnx2tf makes of ``MaxPool2d(3, 2, padding=1)`` when the
    chain does not rewrite it): its full-int8 file aborts LiteRT's builtin kernels when allocated
    (after XNNPACK refuses it), and its int16x8 file has a PADV2 LiteRT refuses to prepare."""

    def __init__(self, num_classes):
        import torchvision

        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        lowest_pad = torch.nn.ConstantPad2d(1, float(torch.finfo(torch.float32).min))
        pool = torch.nn.Sequential(lowest_pad, torch.nn.MaxPool2d(3, 2))
        self.body = torch.nn.Sequential(r.conv1, r.bn1, r.relu, pool, r.layer1)
        self.head = torch.nn.Conv2d(64, num_classes, 1)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.head(self.body(x))
        return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_a_native_crash_fails_only_its_variant(tmp_path, blobs, capsys):
    """A real SIGABRT inside LiteRT (the builtin kernels on the ResNet stem's full-int8 file) and a
    real refusal (int16x8's PADV2) fail those two variants alone: float32 is built, measured and
    described by the manifest with both failures, and the exit code is 3."""
    import json

    from seg2tflite.models.registry import ModelConfig, register_model, unregister_model

    out = tmp_path / "out"
    register_model(ModelConfig(name="hostile_resnet_stem", family="test", size_divisor=4, num_classes=4))(ResNetStem)
    try:
        code = main(_small_convert(out, blobs, "--variants", "float32", "full_int8", "int16x8", "--input-size", "64", "64",
                                   model="hostile_resnet_stem"))  # fmt: skip
    finally:
        unregister_model("hostile_resnet_stem")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("seg2tflite: error: ")]
    assert code == 3 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "2 of 3 TFLite variants failed" in errors[0]
    assert "full_int8: LiteRT, loading and allocating it failed: killed by SIGABRT" in errors[0]
    assert "int16x8: LiteRT, loading and allocating it failed" in errors[0] and "PADV2" in errors[0]
    manifest = json.loads((out / "manifest.json").read_text())
    failures = manifest["variant_failures"]
    assert set(failures) == {"full_int8", "int16x8"}
    assert failures["full_int8"]["step"] == "loading" and failures["full_int8"]["reason"] == "killed by SIGABRT"
    assert "model_float32.tflite" in manifest["artifacts"] and not any("int8" in a for a in manifest["artifacts"])
    assert (out / "model_float32.tflite").is_file()
    assert not (out / "model_full_int8.tflite").exists() and not (out / "model_int16x8.tflite").exists()
    parity = json.loads((out / "parity.json").read_text())
    assert parity["stages"]["float32"]["gate"] == "pass" and "full_int8" not in parity["stages"]


def test_sigterm_during_onnx2tf_leaves_nothing_in_temp(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seg2tflite.app", "convert", "--model", "segformer_b0", "--input-size", "64", "64",
               "--calib-data", "synthetic:size=64,train=16,val=8,test=8", "--calib-size", "8", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while process.poll() is None and not list(temp.glob("seg2tflite_onnx2tf_*/model.onnx")):
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        process.send_signal(signal.SIGTERM)  # what `kill PID` and batch systems send
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert stderr.decode().rstrip().endswith("seg2tflite: terminated") and b"Traceback" not in stderr
    assert not list(temp.glob("seg2tflite_*")), sorted(temp.iterdir())
    assert not list(out.glob(".seg2tflite-*"))


@pytest.fixture
def full_disk(tmp_path):
    """A 40 kB tmpfs: room for the ONNX file and the weights, not for the SavedModel (root only)."""
    import os
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)])


def test_a_disk_filling_up_inside_onnx2tf_is_one_line(capsys, full_disk, blobs):
    from small_chain import registered_small

    out = full_disk / "out"
    with registered_small("hostile_small"):
        line = fails(capsys, _small_convert(out, blobs, "--variants", "float32"), f"{out / 'saved_model'}: no space left")
    assert "Traceback" not in line and ".seg2tflite-" not in line
    assert not list(out.glob(".seg2tflite-*"))
