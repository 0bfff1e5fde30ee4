"""Every model family through the whole chain at a small size: five .tflite files, every float gate.

One conversion per family per session (module fixture, parametrised over the registry's four
families), seeded random weights as ``seg2tflite convert`` without ``--checkpoint`` uses, 64x64,
8 synthetic classes, 8 calibration images, 16 parity images from the val split.
"""

import json
import math

import numpy as np
import pytest
import torch

from seg2tflite.converters import ConvertConfig, ParityError, convert_registered
from seg2tflite.converters.manifest import sha256_file
from seg2tflite.converters.runtimes import OnnxRunner
from seg2tflite.converters.stages import FLOAT_STAGES, INTEGER_FORM, QUANTIZED_VARIANTS, STAGES, VARIANTS
from seg2tflite.data import load_dataset
from seg2tflite.models import create_model, integer_form

from model_helpers import carried_models, convert_keeping_failures

pytestmark = pytest.mark.chain

FAMILIES = carried_models()
SPEC = "synthetic:size=64,train=16,val=16"
SIZE = (64, 64)


@pytest.fixture(scope="module", params=FAMILIES)
def converted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=16)
    result, error, seconds = convert_keeping_failures(
        lambda: convert_registered(
            name,
            out,
            config,
            load_dataset(SPEC, "train"),
            load_dataset(SPEC, "val"),
            num_classes=8,
            seed=0,
            log=None,
            progress=False,
        )
    )
    print(f"\n{name}: converted in {seconds:.1f}s ({', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())})")
    print(result.table)
    return name, result, error


def test_float_gates(converted):
    name, result, error = converted
    stages = result.parity.stages
    for stage in FLOAT_STAGES:  # SegNet included: its flipped near-ties are single values, not outliers in number
        r = stages[stage]
        assert r.nonfinite == 0
        assert r.vs_pytorch["argmax_agreement"] >= 0.9999, (name, stage)
        assert r.vs_pytorch["outlier_share"]["0.001"] <= 1e-4, (name, stage)
        assert r.gate == "pass", (name, stage, r.failures)
    assert stages["float16"].vs_pytorch["decisive_agreement"] >= 0.999, name
    assert stages["float16"].gate == "pass"
    for variant in VARIANTS:  # XNNPACK and the builtin kernels agree on every file XNNPACK takes ops of
        assert bool(stages[variant].builtin) == bool(result.parity.delegation[variant]["delegated"]), (name, variant)
        assert stages[variant].gate != "fail", (name, variant, stages[variant].failures)
    assert error is None and result.parity.failures == []


def test_delegation_is_read_from_the_interpreter(converted):
    name, result, _ = converted
    for variant in VARIANTS:
        d = result.parity.delegation[variant]
        assert d["ops"] == sum(result.ops[variant].counts.values()), (name, variant)
        assert d["ops"] - d["delegated"] == sum(d["not_delegated"].values())
        # XNNPACK refusing a whole graph (SegFormer's full int8 on LiteRT 2.3.0) leaves it all to the builtin kernels
        assert d["delegate"] == "xnnpack" or d["delegated"] == 0, (name, variant, d)
    assert result.parity.delegation["float32"]["delegated"] > 0, name


def test_every_variant_is_builtins_only(converted):
    name, result, _ = converted
    assert set(result.ops) == set(VARIANTS)
    for variant, report in result.ops.items():
        assert report.non_builtin == [], (name, variant)
        assert (result.out_dir / f"model_{variant}.tflite").stat().st_size > 0
    assert result.ops["full_int8"].input_type == "INT8" and result.ops["full_int8"].output_type == "INT8"
    assert result.manifest["ops"]["full_int8"]["float_ops"] == result.ops["full_int8"].float_ops
    print(f"{name} full_int8 ops still in float: {result.ops['full_int8'].float_ops or 'none'}")


def test_integer_variants_come_from_the_integer_form_when_there_is_one(converted):
    """DeepLabv3+'s dense decoder: the float files run its taps before the upsampling (nine resizes
    to 1/4 scale), the integer files the plain 3x3 conv (one) from a SavedModel of their own, gated
    as float like the first. SegNet's integer files come from its form with one range per pre-pool
    map, fitted to the calibration images (same ops). Every other family has one form and one
    SavedModel. (Both DeepLab forms add the image-pooling broadcast and the final upsampling.)"""
    name, result, _ = converted
    integer = integer_form(create_model(name, num_classes=8), calibration=torch.randn(2, 3, *SIZE))
    resizes = {v: result.ops[v].counts.get("RESIZE_BILINEAR", 0) for v in VARIANTS}
    if integer is None:
        assert INTEGER_FORM not in result.artifacts and not (result.out_dir / STAGES[INTEGER_FORM].file).exists()
        assert len(set(resizes.values())) == 1, (name, resizes)
        return
    stage = result.parity.stages[INTEGER_FORM]
    assert stage.gate == "pass" and stage.previous == "onnx", stage.failures
    assert stage.vs_pytorch["argmax_agreement"] >= 0.9999
    assert result.manifest["model"]["integer_deploy_class"].endswith(f".{type(integer).__name__}")
    assert any(name.startswith(f"{STAGES[INTEGER_FORM].file}/") for name in result.manifest["artifacts"])
    for variant in VARIANTS:
        expected = (3 if STAGES[variant].integer else 11) if name.startswith("deeplab") else resizes["float32"]
        assert resizes[variant] == expected, (variant, resizes)
    # full int8 scored against a float32 file of its own graph: every op with an int8 output has
    # its float tensor (SegNet's comparisons and logical ops give booleans, its DEQUANTIZEs float)
    not_int8 = {"DEQUANTIZE", "EQUAL", "NOT_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT"}
    counts = result.ops["full_int8"].counts
    assert len(result.parity.int8_sensitivity) == sum(n for op, n in counts.items() if op not in not_int8), counts


def test_quantized_stages_reported_not_gated(converted):
    name, result, _ = converted
    for variant in QUANTIZED_VARIANTS:
        r = result.parity.stages[variant]
        assert r.gate == "report" and r.nonfinite == 0, (name, variant)
        assert math.isfinite(r.miou) and math.isfinite(r.vs_pytorch["cosine"])
        assert r.previous == "float32"


def test_manifest_and_rebuildable_reference(converted):
    name, result, _ = converted
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == name and manifest["model"]["seed"] == 0
    for rel, entry in manifest["artifacts"].items():
        assert sha256_file(out / rel) == entry["sha256"]
    assert len(manifest["calibration"]["images"]) == 8
    assert manifest["quantization"]["full_int8"]["input"]["scale"] > 0
    # The seeded weights were saved: anyone can rebuild the PyTorch reference from them.
    from seg2tflite.models.registry import load_model

    rebuilt = load_model(out / "model.safetensors").eval()
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    import torch

    with torch.no_grad():
        ref = rebuilt(torch.from_numpy(x)).numpy()
    y = OnnxRunner(out / "model.onnx")(x)
    assert np.abs(y - ref).max() <= 1e-3 * (ref.max() - ref.min())


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_full_size_conversion(name, tmp_path):
    """At the registry input size (512x512 SegFormer/DeepLab, 352x480 SegNet), 32 calibration images."""
    from seg2tflite.models import get_model_config

    size = get_model_config(name).input_size
    spec = f"synthetic:size={size[0]}x{size[1]},train=48,val=8"
    config = ConvertConfig(input_size=size, calib_size=32, parity_images=8)
    try:
        result = convert_registered(
            name, tmp_path, config, load_dataset(spec, "train"), load_dataset(spec, "val"), num_classes=8, seed=0, log=print
        )
        error = None
    except ParityError as e:
        result, error = e.result, e
    for variant, report in result.ops.items():
        assert report.non_builtin == [], variant
    for stage in FLOAT_STAGES:
        assert result.parity.stages[stage].vs_pytorch["argmax_agreement"] >= 0.9999, stage
    assert error is None, result.table
