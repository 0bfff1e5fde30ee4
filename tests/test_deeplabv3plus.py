"""DeepLabv3+'s own cases: ASPP rates and output stride, parameter counts, other timm encoders, encoder weights.

Shapes, backward, the deploy form's function and weights, size refusal, checkpoints and the ONNX
export are ``ModelTester``'s (tests/models_base.py), run over every registered model."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from seg2tflite.errors import UserError
from seg2tflite.models import create_model, deploy_form, get_model_config, integer_form
from seg2tflite.models.deeplabv3plus import DeepLabV3Plus, DeepLabV3PlusDeploy, DeepLabV3PlusInt8Deploy

from model_helpers import randomise_batchnorm
from small_chain import convert_float32

NUM_CLASSES = 5


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return randomise_batchnorm(create_model("deeplabv3plus_mobilenetv2", num_classes=NUM_CLASSES)).eval()


@pytest.fixture(scope="module")
def xception():
    torch.manual_seed(0)
    return randomise_batchnorm(create_model("deeplabv3plus_xception65", num_classes=NUM_CLASSES)).eval()


# ---------------------------------------------------------------- configs, shapes, structure


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3plus_xception65"])
def test_registered_config(name):
    config = get_model_config(name)
    assert config.family == "deeplabv3plus"
    assert config.input_size == (512, 512) and config.num_classes == 21 and config.size_divisor == 16
    assert config.kwargs.get("separable", False) == (name == "deeplabv3plus_xception65")


def test_parameter_counts(mobilenet, xception):
    mnv2 = create_model("deeplabv3plus_mobilenetv2")
    assert _count(mnv2) == 5_816_053 and _count(mnv2.encoder) == 1_811_712
    x65 = create_model("deeplabv3plus_xception65")
    assert _count(x65) == 41_055_413 and _count(x65.encoder) == 37_867_312
    # 21 -> 5 classes removes 16 rows of the 256-channel 1x1 classifier (weights and bias).
    assert _count(mnv2) - _count(mobilenet) == 16 * 257 == _count(x65) - _count(xception)


def test_structure_follows_the_paper(mobilenet, xception):
    for model, low_ch in ((mobilenet, 24), (xception, 256)):
        assert model.encoder.feature_info.reduction()[model.low_index] == 4
        assert model.encoder.feature_info.channels()[model.low_index] == low_ch
        assert model.decoder.low_proj[0].out_channels == 48
        assert len(model.aspp.branches) == 5
        dilations = [b[0].dilation[0] for b in model.aspp.branches[1:4]]
        assert dilations == [6, 12, 18]
    # Xception: depthwise-separable ASPP and decoder convs; MobileNetV2: plain 3x3 convs.
    assert xception.aspp.branches[1][0].groups == xception.aspp.branches[1][0].in_channels
    assert xception.decoder.fuse[0][0].groups == 256 + 48
    assert mobilenet.aspp.branches[1][0].groups == 1 and mobilenet.decoder.fuse[0][0].groups == 1


def test_output_stride_8_doubles_the_atrous_rates():
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, output_stride=8).eval()
    assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [12, 24, 36]
    assert model.encoder.feature_info.reduction()[-1] == 8
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 56)).shape == (1, 3, 40, 56)
    with pytest.raises(UserError, match="output_stride=32"):
        create_model("deeplabv3plus_mobilenetv2", output_stride=32)


def test_any_timm_encoder_with_stride_4_features():
    torch.manual_seed(0)
    model = randomise_batchnorm(DeepLabV3Plus("resnet18", num_classes=3)).eval()
    assert model.encoder.feature_info.channels()[model.low_index] == 64
    assert _count(model.encoder) == 11_176_512
    # Head on 512 channels, BN = 2 per channel: ASPP 1x1 + three 3x3 + pooling + projection,
    # decoder 64->48 projection + two 3x3 convs, 1x1 classifier with bias.
    aspp = 2 * (512 * 256 + 512) + 3 * (512 * 256 * 9 + 512) + (5 * 256 * 256 + 512)
    decoder = (64 * 48 + 96) + (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512)
    assert _count(model) - _count(model.encoder) == aspp + decoder + (256 * 3 + 3) == 5_427_043
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


# ---------------------------------------------------------------- deploy form and export


def test_deploy_form_of_a_separable_decoder_is_the_model(xception):
    """Nothing needs rewriting (checked with onnx2tf; see the conversion test): same module."""
    assert deploy_form(xception) is xception


def test_dense_decoder_deploys_as_a_deeplab_with_the_same_modules(mobilenet):
    """The rewrite (taps mixed before the upsampling) keeps the model's decoder and divisor, and is
    the model's function to float64's precision (1e-10 of the logit range: the same sums, reordered)
    on a non-square input, where a tap shifted along the wrong axis shows."""
    deploy = deploy_form(mobilenet)
    assert isinstance(deploy, DeepLabV3PlusDeploy) and deploy.decoder is mobilenet.decoder
    assert deploy.size_divisor == mobilenet.size_divisor
    model = copy.deepcopy(mobilenet).double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        reference, rewritten = model(x), deploy_form(model)(x)
    assert (rewritten - reference).abs().max() <= 1e-10 * (reference.max() - reference.min())


def test_integer_form_of_a_dense_decoder_splits_the_conv_on_the_concatenation(mobilenet, xception):
    """The integer files' form: the 3x3 conv after the upsampling, as two convs summed instead of one
    on the concatenation, with the model's modules and function (to float64's precision); from the
    float form too. A separable decoder has one form for every file."""
    for source in (mobilenet, deploy_form(mobilenet)):
        integer = integer_form(source)
        assert isinstance(integer, DeepLabV3PlusInt8Deploy) and integer.decoder is mobilenet.decoder
    assert integer_form(xception) is None
    model = copy.deepcopy(mobilenet).double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        reference, rewritten = model(x), integer_form(model)(x)
    assert (rewritten - reference).abs().max() <= 1e-10 * (reference.max() - reference.min())

    def concatenations(module) -> int:
        return len(torch.jit.trace(module, torch.randn(1, 3, 64, 64)).inlined_graph.findAllNodes("aten::cat"))

    assert (concatenations(mobilenet), concatenations(integer_form(mobilenet))) == (2, 1)  # ASPP's stays


@pytest.mark.slow
@pytest.mark.chain
def test_converts_to_tflite_builtins(mobilenet, tmp_path):
    """The chain at 64x64: builtins only (mean-pool, 1x1 resize, dilated convs), float32 gates pass."""
    result = convert_float32(mobilenet, torch.randn(2, 3, 64, 64), tmp_path)
    ops = set(result.ops["float32"].counts)
    assert not any(op.startswith("Flex") for op in ops), ops
    assert {"MEAN", "RESIZE_BILINEAR", "DEPTHWISE_CONV_2D"} <= ops
    assert result.parity.stages["float32"].gate == "pass", result.table


# ---------------------------------------------------------------- checkpoints


def _timm_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm classification model's state dict (head included), as ImageNet weights come,
    with every float tensor redrawn so that a wrong key mapping shows."""
    g = torch.Generator().manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    return {k: torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone() for k, v in state.items()}


def test_encoder_checkpoint_loads_timm_weights(tmp_path):
    state = _timm_state("mobilenetv2_100")
    assert {"classifier.weight", "conv_head.weight"} <= state.keys()  # the head is dropped on load
    del state["bn1.num_batches_tracked"]  # published timm files often lack the BN counters
    save_file(state, str(tmp_path / "mnv2.safetensors"))
    model = create_model("deeplabv3plus_mobilenetv2", encoder_checkpoint=str(tmp_path / "mnv2.safetensors"))
    own = model.encoder.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if k in state)
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], state["blocks.6.0.conv_pwl.weight"])


def test_encoder_checkpoint_maps_flattened_xception_keys(tmp_path):
    """timm's hook feature wrapper renames blocks.0 -> blocks_0; a .pt file, read weights-only."""
    state = _timm_state("xception65", seed=1)
    torch.save(state, tmp_path / "x65.pt")
    model = DeepLabV3Plus("xception65", num_classes=3, separable=True, encoder_checkpoint=tmp_path / "x65.pt")
    own = model.encoder.state_dict()
    assert "blocks_0.stack.conv1.conv_dw.weight" in own
    assert torch.equal(own["blocks_0.stack.conv1.conv_dw.weight"], state["blocks.0.stack.conv1.conv_dw.weight"])
    assert torch.equal(own["blocks_20.stack.conv3.bn_pw.running_var"], state["blocks.20.stack.conv3.bn_pw.running_var"])


def test_bad_encoder_checkpoints_are_refused(tmp_path):
    good = _timm_state("mobilenetv2_100")
    # Each case: the names and shapes the refusal must carry (the count before each list, then its first keys).
    cases = {
        "other_model": (
            _timm_state("resnet18"),
            [r"\(blocks\.0\.0\.bn1\.bias", r"\(conv1\.weight", r"\(bn1\.bias \(64,\)\D*\(32,\)"],
        ),
        "missing": ({k: v for k, v in good.items() if k != "conv_stem.weight"}, [r"\b1\b[^;(]*\(conv_stem\.weight\)"]),
        "extra": ({**good, "decoder.weight": torch.zeros(1)}, [r"\b1\b[^;(]*\(decoder\.weight\)"]),
        "shape": ({**good, "bn1.weight": torch.zeros(7)}, [r"\b1\b[^;(]*\(bn1\.weight \(7,\)\D*\(32,\)\)"]),
    }
    for case, (state, figures) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        save_file(state, str(path))
        with pytest.raises(UserError) as info:
            create_model("deeplabv3plus_mobilenetv2", encoder_checkpoint=str(path))
        message = str(info.value)
        assert str(path) in message and "mobilenetv2_100" in message, case
        for figure in figures:
            assert re.search(figure, message), (case, figure, message)
    for name, content in (("junk.safetensors", b"not a checkpoint"), ("absent.safetensors", None)):
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError) as info:
            create_model("deeplabv3plus_mobilenetv2", encoder_checkpoint=str(path))
        assert str(path) in str(info.value)
