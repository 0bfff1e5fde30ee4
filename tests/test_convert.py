"""The conversion API on a small CNN: offline, the artifacts and manifest, ONNX input, bad input.

One conversion of the small CNN (the session fixture in conftest.py) runs with every internet connection refused in
this process; the other tests read its outputs or stop before onnx2tf.
"""

import json
import re
import socket

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from seg2tflite.app.flags import flag_wording
from seg2tflite.converters import ConvertConfig, convert_model, convert_onnx, resolve_onnx_input_size
from seg2tflite.converters.manifest import sha256_file
from seg2tflite.converters.onnx_export import INPUT_NAME, export_onnx, load_onnx, prepare_onnx
from seg2tflite.converters.ops import op_report
from seg2tflite.converters.runtimes import OnnxRunner, TFLiteRunner, TorchRunner, make_runner
from seg2tflite.errors import UserError

from small_chain import SIZE, BlobDataset, K, small_model

pytestmark = pytest.mark.chain


def test_conversion_is_offline(offline_result):
    result, during_conversion, attempts = offline_result
    assert result.parity.failures == []
    assert during_conversion == []
    assert attempts and "github.com/PINTO0309/onnx2tf" in attempts[0][1]  # what the guard keeps it from


def test_artifacts_and_manifest(offline_result):
    result = offline_result[0]
    out = result.out_dir
    expected = ["model.onnx", "saved_model", *(f"model_{v}.tflite" for v in result.manifest["config"]["variants"])]
    for name in expected + ["parity.json", "manifest.json", "onnx2tf.log"]:
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "saved_model").iterdir()) <= ["assets", "fingerprint.pb", "saved_model.pb", "variables"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == ["test"]
    for rel, entry in manifest["artifacts"].items():
        assert sha256_file(out / rel) == entry["sha256"], rel
    assert set(manifest["artifacts"]) >= {"model.onnx", "model_full_int8.tflite", "saved_model/saved_model.pb"}
    assert len(manifest["calibration"]["images"]) == 8
    assert all(name.startswith("train_") for name in manifest["calibration"]["images"])
    assert not set(manifest["calibration"]["images"]) & set(manifest["parity"]["images"])
    assert manifest["versions"]["onnx2tf"] and manifest["versions"]["tensorflow"]
    q = manifest["quantization"]["full_int8"]
    assert q["input"]["dtype"] == "int8" and q["input"]["scale"] > 0
    assert q["output"]["dtype"] == "int8" and q["output"]["scale"] > 0
    tfl = TFLiteRunner(out / "model_full_int8.tflite")
    assert tfl.io_quantization == q
    assert manifest["quantization"]["float32"]["input"]["dtype"] == "float32"
    assert manifest["layouts"]["tflite"]["input"].startswith(f"NHWC (1, {SIZE[0]}, {SIZE[1]}, 3)")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["stages"]["float32"]["gate"] == "pass"
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)


def test_builtins_only_and_float_ops(offline_result):
    result = offline_result[0]
    for variant, report in result.ops.items():
        assert report.non_builtin == [], variant
        assert report.to_dict() == result.manifest["ops"][variant]
    assert result.ops["full_int8"].input_type == "INT8"
    assert result.ops["full_int8"].float_ops == []  # conv/pool/resize all have int8 kernels
    assert result.ops["float32"].counts == {"CONV_2D": 3, "MAX_POOL_2D": 1, "RESIZE_BILINEAR": 1}


def test_runners_reproduce_parity(offline_result):
    result = offline_result[0]
    out = result.out_dir
    x = np.random.default_rng(0).standard_normal((2, 3, *SIZE)).astype(np.float32)
    ref = TorchRunner(small_model())(x)
    for path in (out / "model.onnx", out / "saved_model", out / "model_float32.tflite"):
        y = make_runner(path)(x)
        assert y.shape == (2, K, *SIZE)
        assert np.abs(y - ref).max() <= 1e-4 * (ref.max() - ref.min()), path
    y8 = make_runner(out / "model_full_int8.tflite")(x)
    assert y8.shape == ref.shape and np.isfinite(y8).all()
    assert (y8.argmax(1) == ref.argmax(1)).mean() > 0.8


def test_convert_onnx_with_float_io(offline_result, tmp_path):
    result = offline_result[0]
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=2, variants=("float32", "full_int8"), int8_io="float")
    res = convert_onnx(
        result.out_dir / "model.onnx",
        tmp_path,
        config,
        BlobDataset("train"),
        BlobDataset("val"),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        log=None,
        progress=False,
    )
    assert list(res.parity.stages) == ["onnx", "saved_model", "float32", "full_int8"]
    assert res.parity.reference == "onnx" and "onnx logit range" in res.table
    assert res.parity.stages["float32"].gate == "pass"
    assert res.ops["full_int8"].input_type == "FLOAT32"
    assert res.manifest["quantization"]["full_int8"]["input"]["dtype"] == "float32"
    assert res.ops["full_int8"].boundary_ops >= 2  # QUANTIZE in, DEQUANTIZE out


def test_dynamic_onnx_input_needs_input_size(tmp_path):
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(
        small_model(),
        (torch.zeros(1, 3, *SIZE),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
        opset_version=17,
        dynamo=False,
    )
    with pytest.raises(UserError, match=r"dynamic\.onnx: input 'x' has dynamic dimensions .*pass input_size=\(H, W\)"):
        resolve_onnx_input_size(path, None)
    assert resolve_onnx_input_size(path, (64, 64)) == (64, 64)
    prepared = prepare_onnx(load_onnx(path), (64, 64), str(path))
    dims = [d.dim_value for d in prepared.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64] and prepared.num_classes == K


def test_static_onnx_size_mismatch(tmp_path):
    model = export_onnx(small_model(), SIZE)
    assert model.graph.input[0].name == INPUT_NAME
    with pytest.raises(UserError, match=re.escape(f"pass input_size={SIZE}")):
        prepare_onnx(model, (64, 64), "m.onnx")
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert resolve_onnx_input_size(tmp_path / "m.onnx", None) == SIZE


def test_refuses_mismatched_data_before_converting(tmp_path):
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=2)
    with pytest.raises(UserError, match="also the evaluation split"):
        convert_model(small_model(), tmp_path, config, BlobDataset("val"), BlobDataset("val"), log=None, progress=False)
    with pytest.raises(UserError, match="model: it predicts 4 classes but blobs:train has 6; give it a 6-class head"):
        convert_model(small_model(), tmp_path, config, BlobDataset("train", num_classes=6), None, log=None, progress=False)
    with pytest.raises(UserError, match="fewer than the minimum 8"):
        convert_model(small_model(), tmp_path, config, BlobDataset("train", n=5), None, log=None, progress=False)
    assert not (tmp_path / "saved_model").exists()


def test_config_validation():
    with pytest.raises(UserError, match=r"input_size: \(64,\) is not two sizes >= 8; pass input_size=\(H, W\)"):
        ConvertConfig(input_size=(64,))
    with pytest.raises(UserError, match="variants"):
        ConvertConfig(input_size=(64, 64), variants=("int4",))
    with pytest.raises(UserError, match="int8_io"):
        ConvertConfig(input_size=(64, 64), int8_io="uint8")
    with pytest.raises(UserError, match="calib_size: 4 is below the minimum of 8 images; raise calib_size"):
        ConvertConfig(input_size=(64, 64), calib_size=4)
    with flag_wording():  # the same refusals on the command line name its flags
        with pytest.raises(UserError, match="--input-size: .*pass --input-size H W"):
            ConvertConfig(input_size=(64,))
        with pytest.raises(UserError, match="--calib-size: 4 is below the minimum of 8 images; raise --calib-size"):
            ConvertConfig(input_size=(64, 64), calib_size=4)
    config = ConvertConfig(input_size=[64, 96], variants=("full_int8", "float32"))
    assert config.input_size == (64, 96) and config.variants == ("float32", "full_int8")
    with pytest.raises(Exception):
        config.opset = 17  # frozen


def test_onnx_runner_batches_static_models(offline_result):
    result = offline_result[0]
    runner = OnnxRunner(result.out_dir / "model.onnx")
    x = np.random.default_rng(1).standard_normal((3, 3, *SIZE)).astype(np.float32)
    y = runner(x)
    assert y.shape == (3, K, *SIZE)
    assert np.allclose(y[1:2], runner(x[1:2]))


def test_op_report_reads_operator_codes(offline_result):
    result = offline_result[0]
    report = op_report((result.out_dir / "model_int16x8.tflite").read_bytes())
    assert report.input_type == "FLOAT32" and report.non_builtin == []
    assert "CONV_2D" in report.counts


def test_torchvision_model_outside_the_registry(tmp_path):
    """Any PyTorch segmentation module converts: torchvision's LR-ASPP MobileNetV3 (hardswish,
    squeeze-excite, adaptive pooling), wrapped to return its "out" logits."""
    import torchvision

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    torch.manual_seed(0)
    model = Logits(torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K))
    config = ConvertConfig(input_size=(64, 64), calib_size=8, parity_images=2, variants=("float32", "full_int8"))

    class Big(BlobDataset):
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return np.tile(image, (2, 2, 1))[:64, :64], np.tile(mask, (2, 2))[:64, :64]

    result = convert_model(model.eval(), tmp_path, config, Big("train"), Big("val"), log=None, progress=False)
    assert result.parity.failures == []
    assert all(r.non_builtin == [] for r in result.ops.values())
    assert "HARD_SWISH" in result.ops["float32"].counts


def test_offline_guards():
    from seg2tflite.converters.offline import NetworkForbidden, no_network, onnx2tf_offline

    original = socket.socket.connect
    with no_network():
        with pytest.raises(NetworkForbidden):
            socket.create_connection(("192.0.2.1", 80))  # TEST-NET-1: never routable
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(NetworkForbidden):
            s.connect(("192.0.2.1", 80))
        s.close()
        a, b = socket.socketpair()  # local (AF_UNIX) sockets keep working
        a.close(), b.close()
    assert socket.socket.connect is original
    import onnx2tf.onnx2tf as main

    sample = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
    with onnx2tf_offline(sample):
        assert np.array_equal(main.download_test_image_data(), sample)
        with pytest.raises(NetworkForbidden):
            socket.create_connection(("192.0.2.1", 80))
    assert main.download_test_image_data.__module__ == "onnx2tf.utils.common_functions"


def test_float64_noise_floor_of_a_smooth_model_is_rounding_only():
    from seg2tflite.converters.divergence import float64_noise_floor

    model = small_model()
    images = np.random.default_rng(0).standard_normal((2, 3, *SIZE)).astype(np.float32)
    floor = float64_noise_floor(model, images)
    assert 0 < floor["max_abs_over_range"] < 1e-5
    assert next(model.parameters()).dtype == torch.float32  # measured on a copy


SCRIPT_WITHOUT_GUARD = """
import sys
sys.path.insert(0, {tests!r})
from small_chain import SIZE, BlobDataset, small_model
from seg2tflite.converters import ConvertConfig, convert_model
print("script body runs", flush=True)
config = ConvertConfig(input_size=SIZE, variants=("float32",), calib_size=8, parity_images=2)
result = convert_model(small_model(), {out!r}, config, BlobDataset("train"), BlobDataset("val"), log=None, progress=False)
print("converted", sorted(result.artifacts))
"""


def test_a_script_without_main_guard_converts_once(tmp_path):
    """The variant worker is a spawned process; it must not run the user's script again."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "convert_mine.py"
    script.write_text(SCRIPT_WITHOUT_GUARD.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out")))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script body runs") == 1 and "converted" in done.stdout, done.stdout
    assert (tmp_path / "out" / "model_float32.tflite").stat().st_size > 0
