"""``--output classes`` and ``--output lowres``: what each file returns, which ops XNNPACK takes,
and that parity holds on what the app gets (the class map; the low-res logits upsampled)."""

import numpy as np
import pytest

from seg2tflite.converters import ConvertConfig, convert_model
from seg2tflite.converters.app_io import AppIO
from seg2tflite.converters.runtimes import TFLiteRunner

from small_chain import SIZE, BlobDataset, K, small_model

VARIANTS = ("float32", "full_int8")


def _convert(tmp_path_factory, **app):
    out = tmp_path_factory.mktemp(app["image_output"])
    config = ConvertConfig(input_size=SIZE, variants=VARIANTS, calib_size=8, parity_images=4, **app)
    return convert_model(small_model(), out, config, BlobDataset("train"), BlobDataset("val"), log=None, progress=False)


def _op_names(model) -> list[str]:
    runner = TFLiteRunner(model, xnnpack=False, app=AppIO(output="lowres") if isinstance(model, bytes) else None)
    return [op["op_name"] for op in runner.interpreter._get_ops_details()]


@pytest.fixture(scope="module")
def classes_result(tmp_path_factory):
    return _convert(tmp_path_factory, image_input="uint8", image_output="classes")


@pytest.fixture(scope="module")
def lowres_result(tmp_path_factory):
    return _convert(tmp_path_factory, image_output="lowres")


def test_bad_output_option_is_one_line():
    from seg2tflite.app.flags import flag_wording
    from seg2tflite.errors import UserError

    with pytest.raises(UserError, match="^image_output: 'mask' is not valid; use logits, classes, lowres$"):
        ConvertConfig(input_size=SIZE, image_output="mask")
    with flag_wording(), pytest.raises(UserError, match="^--output: 'mask' is not valid; use logits, classes, lowres$"):
        ConvertConfig(input_size=SIZE, image_output="mask")


@pytest.mark.chain
def test_classes_files_return_the_class_map(classes_result):
    """An int32 (1, H, W) class map, ARG_MAX the last op, left by XNNPACK to the builtin kernels;
    its argmax figures pass the float gate against PyTorch."""
    for variant in VARIANTS:
        path = classes_result.out_dir / f"model_{variant}.tflite"
        runner = TFLiteRunner(path)  # the manifest next to it says what the file's ends are
        assert runner.output_form == "classes"
        assert np.dtype(runner.output["dtype"]) == np.int32 and tuple(runner.output["shape"]) == (1, *SIZE)
        assert _op_names(path)[-1] == "ARG_MAX", variant
        assert classes_result.manifest["litert_delegation"][variant]["not_delegated"].get("ARG_MAX") == 1
        assert classes_result.manifest["gpu_delegate"][variant]["outside_gpu_rules"] == {"ARG_MAX": 1, "CAST": 1}
        stage = classes_result.parity.stages[variant]
        assert stage.output == "classes" and "max_abs" not in stage.vs_pytorch
    assert classes_result.parity.stages["float32"].gate == "pass"
    assert classes_result.parity.stages["float32"].vs_pytorch["argmax_agreement"] >= 0.9999
    assert classes_result.manifest["layouts"]["tflite"]["output"].startswith(f"(1, {SIZE[0]}, {SIZE[1]}) int32")
    for row in classes_result.parity.client.values():  # MediaPipe's reading of a class map: reported, not gated
        assert row["note"].startswith("not gated")


@pytest.mark.chain
def test_classes_runner_needs_the_class_count(classes_result):
    with pytest.raises(ValueError, match="returns a class map"):
        TFLiteRunner((classes_result.out_dir / "model_float32.tflite").read_bytes(), app=AppIO("uint8"))


@pytest.mark.chain
def test_lowres_files_leave_the_upsampling_to_the_app(lowres_result):
    """The logits at the model's stride (2 for SmallSegNet), no RESIZE_BILINEAR left in the graph;
    upsampled as the model did, they pass the float gates against PyTorch's full-size logits."""
    h, w = SIZE
    for variant in VARIANTS:
        path = lowres_result.out_dir / f"model_{variant}.tflite"
        runner = TFLiteRunner(path)
        assert tuple(runner.output["shape"]) == (1, h // 2, w // 2, K), variant
        assert "RESIZE_BILINEAR" not in _op_names(path), variant
        assert runner(np.zeros((1, 3, h, w), np.float32)).shape == (1, K, h, w)
    assert lowres_result.parity.stages["float32"].gate == "pass"
    assert lowres_result.parity.stages["float32"].vs_pytorch["max_abs_over_range"] < 1e-5
    assert "output stride 2" in lowres_result.manifest["layouts"]["tflite"]["output"]


@pytest.mark.chain
def test_lowres_cut_behind_a_dequantize(lowres_result):
    """A full-int8 file with float output ends RESIZE_BILINEAR, DEQUANTIZE: the DEQUANTIZE stays,
    fed the low-res tensor, and the runner upsamples what it returns to the input size."""
    from seg2tflite.calibration import calibration_from_array
    from seg2tflite.converters.tflite_variants import build_tflite

    runner_int8 = TFLiteRunner(lowres_result.out_dir / "model_full_int8.tflite")
    x = np.random.default_rng(0).standard_normal((8, 3, *SIZE)).astype(np.float32)
    calib = calibration_from_array(x, "noise", min_size=1)
    content = build_tflite(lowres_result.out_dir / "saved_model", "full_int8", calib, int8_io="float", app=AppIO(output="lowres"))
    runner = TFLiteRunner(content, app=AppIO(output="lowres"))
    ops = _op_names(content)
    assert ops[-1] == "DEQUANTIZE" and "RESIZE_BILINEAR" not in ops
    assert tuple(runner.output["shape"]) == (1, SIZE[0] // 2, SIZE[1] // 2, K)
    assert np.dtype(runner.output["dtype"]) == np.float32
    assert runner(x[:1]).shape == runner_int8(x[:1]).shape == (1, K, *SIZE)
