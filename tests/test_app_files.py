"""Files an app can use as they are: TFLite metadata, ``--input uint8``, and a real client.

The client is MediaPipe's ImageSegmenter (the task API Android and iOS apps use, CPU here): it
loads the .tflite files exactly as ``convert`` wrote them and its category mask is compared with
PyTorch's argmax on the same uint8 images. The GPU delegate report is checked for what it can
say on this TensorFlow build.
"""

import json

import numpy as np
import pytest

from seg2tflite.converters import ConvertConfig, convert_model
from seg2tflite.converters.app_client import client_agreement
from seg2tflite.converters.app_io import AppIO, from_pixels, to_pixels
from seg2tflite.converters.metadata import LABEL_FILE, ModelMetadata, add_metadata, read_metadata
from seg2tflite.converters.parity import format_table
from seg2tflite.converters.runtimes import TFLiteRunner, TorchRunner
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.models.registry import IMAGENET_MEAN, IMAGENET_STD

from small_chain import SIZE, BlobDataset, K, small_model

APP_VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")
LABELS = tuple(f"c{i}" for i in range(K))


def test_pixels_round_trip_exactly():
    """The uint8 pixels an app feeds are exactly those the normalised parity images came from."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    normalised = from_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD)
    image = Preprocess((16, 16), IMAGENET_MEAN, IMAGENET_STD).image(pixels[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(normalised[0], image)  # the project's own preprocessing
    np.testing.assert_array_equal(to_pixels(normalised, IMAGENET_MEAN, IMAGENET_STD), pixels)


def test_bad_input_option_is_one_line():
    from seg2tflite.app.flags import flag_wording
    from seg2tflite.errors import UserError

    with pytest.raises(UserError, match="^image_input: 'int8' is not valid; use float or uint8$"):
        ConvertConfig(input_size=(32, 32), image_input="int8")
    with flag_wording(), pytest.raises(UserError, match="^--input: 'int8' is not valid; use float or uint8$"):
        ConvertConfig(input_size=(32, 32), image_input="int8")


def test_parser_reads_refusals():
    """The Analyzer's text format (tensorflow/lite/python/analyzer_wrapper/model_analyzer.cc)."""
    from seg2tflite.converters.gpu_check import parse_gpu_compatibility

    text = (
        "Subgraph#0 main(T#0) -> [T#3]\n"
        "  Op#0 CAST(T#0) -> [T#1]\n"
        "GPU COMPATIBILITY WARNING: Not supported Cast case. Input type: UINT8 and output type: FLOAT32\n"
        "  Op#1 CONV_2D(T#1, T#4, T#5) -> [T#2]\n"
        "  Op#2 ARG_MAX(T#2, T#6) -> [T#3]\n"
        "GPU COMPATIBILITY WARNING: Not supported op ARG_MAX\n"
        "\n"
        "GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 0, 2 with TFLite runtime 2.19.0\n"
    )
    report = parse_gpu_compatibility(text)
    assert report["ops"] == 3 and report["compatible"] is False
    assert report["refused"] == {"ARG_MAX": 1, "CAST": 1}
    assert report["reasons"]["CAST"].startswith("Not supported Cast case")


# -- metadata on the default conversion (conftest's offline_result: float input) ---------------


@pytest.mark.chain
def test_every_file_carries_metadata(offline_result):
    result = offline_result[0]
    for variant in result.manifest["config"]["variants"]:
        meta = read_metadata((result.out_dir / f"model_{variant}.tflite").read_bytes())
        assert meta is not None, variant
        assert meta["name"] == "SmallSegNet" and meta["version"] == result.manifest["versions"]["seg2tflite"]
        assert meta["associated_files"] == {LABEL_FILE: "".join(f"{n}\n" for n in LABELS)}  # BlobDataset's names
        (subgraph,) = meta["subgraph_metadata"]
        (image,) = subgraph["input_tensor_metadata"]
        (norm,) = image["process_units"]
        assert norm["options_type"] == "NormalizationOptions"
        np.testing.assert_allclose(norm["options"]["mean"], np.array(IMAGENET_MEAN) * 255, rtol=1e-6)
        np.testing.assert_allclose(norm["options"]["std"], np.array(IMAGENET_STD) * 255, rtol=1e-6)
        (mask,) = subgraph["output_tensor_metadata"]
        assert mask["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
        assert [c["name"] for c in subgraph["custom_metadata"]] == ["SEGMENTER_METADATA"]
    assert result.manifest["tflite_metadata"]["labels"] == list(LABELS)


@pytest.mark.chain
def test_metadata_does_not_change_outputs(offline_result, tmp_path):
    """The converter's own file and the same file with metadata give the same logits in LiteRT."""
    from seg2tflite.calibration import calibration_from_array
    from seg2tflite.converters.tflite_variants import build_tflite

    result = offline_result[0]
    images = np.stack([Preprocess(SIZE, IMAGENET_MEAN, IMAGENET_STD).image(BlobDataset("test")[i][0]) for i in range(4)])
    calib = calibration_from_array(images, "test images", min_size=1)
    info = ModelMetadata("small", "1", LABELS, IMAGENET_MEAN, IMAGENET_STD)
    for variant in ("float32", "full_int8"):
        plain = build_tflite(result.out_dir / "saved_model", variant, calib)
        assert read_metadata(plain) is None
        written = add_metadata(plain, info)
        assert read_metadata(written)["name"] == "small"
        assert add_metadata(plain, info) == written  # the label zip carries no time stamp: rebuilds are identical
        np.testing.assert_array_equal(TFLiteRunner(written)(images), TFLiteRunner(plain)(images), err_msg=variant)


# -- --input uint8: the form MediaPipe's ImageSegmenter loads ----------------------------------


@pytest.fixture(scope="module")
def app_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("app")
    config = ConvertConfig(input_size=SIZE, variants=APP_VARIANTS, image_input="uint8", calib_size=8, parity_images=4)
    return convert_model(small_model(), out, config, BlobDataset("train"), BlobDataset("val"), log=None, progress=False)


def _ops_from_input(runner, n: int) -> list[str]:
    """The first ``n`` ops on the path from the graph input (each the first consumer of the last's output)."""
    ops = runner.interpreter._get_ops_details()
    tensor, names = runner.input["index"], []
    for _ in range(n):
        op = next(op for op in ops if tensor in [int(t) for t in op["inputs"]])
        names.append(op["op_name"])
        tensor = int(op["outputs"][0])
    return names


@pytest.mark.chain
def test_uint8_input_files(app_result):
    """Every variant takes uint8 pixels and normalises them in its first ops; parity holds against
    PyTorch on the same images (the chain fed LiteRT the pixels PyTorch's inputs were made from)."""
    assert app_result.parity.failures == []
    assert app_result.parity.stages["float32"].vs_pytorch["argmax_agreement"] >= 0.9999
    for variant in APP_VARIANTS:
        assert app_result.ops[variant].input_type == "UINT8", variant
        runner = TFLiteRunner(app_result.out_dir / f"model_{variant}.tflite", xnnpack=False, app=AppIO("uint8"))
        path = _ops_from_input(runner, 3)
        # one per-channel depthwise conv, not MUL + ADD (two requantizations of the image in full int8)
        assert path == (
            ["CAST", "QUANTIZE", "DEPTHWISE_CONV_2D"] if variant == "full_int8" else ["CAST", "DEPTHWISE_CONV_2D", path[2]]
        )
        assert path[-1] != "ADD", (variant, path)
        assert app_result.manifest["quantization"][variant]["input"] == {"dtype": "uint8", "scale": 0.0, "zero_point": 0}
    assert app_result.manifest["layouts"]["tflite"]["input"].endswith("uint8 RGB pixels 0..255")
    meta = read_metadata((app_result.out_dir / "model_float32.tflite").read_bytes())
    norm = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"][0]["options"]
    assert norm == {"mean": [0.0], "std": [1.0]}  # the graph normalises; a task library passes pixels through


@pytest.mark.chain
def test_mediapipe_image_segmenter_agrees_with_pytorch(app_result):
    """MediaPipe loads each file as written; its mask is PyTorch's argmax on >= 99.9% of the pixels
    for float32/float16, and for the integer variants what LiteRT's argmax of the same file is."""
    dataset = BlobDataset("test")
    pixels = np.stack([dataset[i][0] for i in range(len(dataset))])  # (N, H, W, 3) uint8 at the model's size
    normalised = from_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD, channel_axis=-1).transpose(0, 3, 1, 2)
    torch_classes = TorchRunner(small_model())(normalised).argmax(1)
    figures = {}
    for variant in APP_VARIANTS:
        figures[variant] = client_agreement(
            app_result.out_dir / f"model_{variant}.tflite", pixels, torch_classes, IMAGENET_MEAN, IMAGENET_STD
        )
        assert figures[variant]["labels"] == list(LABELS)  # read from the file's metadata
    print("MediaPipe ImageSegmenter category mask agreement:", json.dumps(figures))
    for variant in ("float32", "float16"):
        assert figures[variant]["vs_reference"] >= 0.999, (variant, figures[variant])
    for variant in APP_VARIANTS:
        assert figures[variant]["vs_litert"] >= 0.999, (variant, figures[variant])
    # the same client on the parity images is a row of the conversion's own parity table
    for variant in APP_VARIANTS:
        row = app_result.parity.client[variant]
        assert row["labels"] == list(LABELS) and row["images"] == 4, (variant, row)
        assert row["vs_litert"] >= 0.999, (variant, row)
    assert min(app_result.parity.client[v]["vs_reference"] for v in ("float32", "float16")) >= 0.999
    assert sum(line.split()[0] == "mediapipe" for line in format_table(app_result.parity).splitlines()) == len(APP_VARIANTS)


@pytest.mark.chain
def test_mediapipe_refusal_is_reported(offline_result):
    """Today's float input of an ImageNet-normalised model: MediaPipe refuses every file, the row
    says why (a full-int8 file's int8 input is a type it does not take at all)."""
    for variant, row in offline_result[0].parity.client.items():
        why = "got INT8" if variant == "full_int8" else "Per-channel image normalization is not available"
        assert why in row["refused"], (variant, row)


@pytest.mark.chain
def test_readme_three_lines_run(app_result, monkeypatch):
    """The README's app snippet, run as written on a file of this conversion."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Using the files in an app", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line and not line.startswith("import")]) == 3
    monkeypatch.chdir(app_result.out_dir)
    rgb_uint8 = BlobDataset("test")[0][0]
    scope = {"rgb_uint8": rgb_uint8}
    exec(code, scope)  # noqa: S102 - the README's own lines
    from seg2tflite.converters.app_client import category_masks

    expected, _ = category_masks(app_result.out_dir / "model_full_int8.tflite", rgb_uint8[None])
    np.testing.assert_array_equal(scope["classes"].reshape(expected.shape[1:]), expected[0])


@pytest.mark.chain
def test_gpu_report_in_manifest(app_result):
    """Each file has a GPU delegate entry; on a TensorFlow whose Analyzer applies no GPU rules it
    says so (checked: false) rather than calling the file compatible."""
    from seg2tflite.converters.gpu_check import analyzer_checks_gpu

    gpu = app_result.manifest["gpu_delegate"]
    assert set(gpu) == set(APP_VARIANTS)
    for variant, report in gpu.items():
        assert report["ops"] == sum(app_result.ops[variant].counts.values()), variant
        assert report["checked"] is analyzer_checks_gpu()
        if not report["checked"]:
            assert report["compatible"] is None and "applies no GPU rules" in report["note"]
            # by the rules' switch: the uint8 -> float32 CAST of --input uint8 is the one op refused
            assert report["outside_gpu_rules"] == {"CAST": 1}, variant
