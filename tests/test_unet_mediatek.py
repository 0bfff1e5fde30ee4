"""The MediaTek low-power UNet's own cases: config and preprocessing, the paper size, parameter counts,
additive skips, the decoder BatchNorm's deploy form, chain.

Shapes, backward, the deploy form's function and weights, size refusal, checkpoints and the ONNX
export are ``ModelTester``'s (tests/models_base.py), run over every registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seg2tflite.converters import ParityError
from seg2tflite.data import Preprocess
from seg2tflite.models import create_model, deploy_form, get_model_config
from seg2tflite.models.unet_mediatek import MediaTekUNet, MediaTekUNetDeploy, ResidualStage, batchnorm_as_conv

from model_helpers import randomise_batchnorm
from small_chain import convert_float32

NAMES = ("unet_mediatek", "unet_mediatek_res12")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_registered_config(name):
    config = get_model_config(name)
    assert config.family == "unet"
    assert config.input_size == (192, 320) and config.num_classes == 6
    assert config.mean == (0.0, 0.0, 0.0) and config.std == (1.0, 1.0, 1.0)
    assert config.size_divisor == 16 and not config.variant_of  # the residual one is other code: carried too


def test_preprocessing_divides_by_255_only():
    """The registry's mean/std reach the one preprocessing definition: 0..255 becomes 0..1."""
    pre = Preprocess.for_model(get_model_config("unet_mediatek"), (16, 32))
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, :16] = 255
    image[:, 16:, 1] = 51
    x = pre.image(image)
    assert x.shape == (3, 16, 32) and x.dtype == np.float32
    assert np.array_equal(x[:, :, :16], np.ones((3, 16, 16), np.float32))
    assert np.allclose(x[1, :, 16:], 0.2) and not x[0, :, 16:].any() and not x[2, :, 16:].any()


def _by_hand(c: int, residual: bool, classes: int = 6) -> int:
    """Parameters from the layer list in the module docstring: conv k x k with bias, BN scale + shift."""
    conv = lambda k, i, o: k * k * i * o + o  # noqa: E731
    bn = lambda o: 2 * o  # noqa: E731
    w = [c * 2**d for d in range(6)]
    total = conv(3, 3, w[0]) + bn(w[0])
    for d in range(5):
        total += conv(3, w[d], w[d + 1]) + bn(w[d + 1]) + conv(3, w[d + 1], w[d + 1]) + bn(w[d + 1])
        if residual:
            total += conv(1, w[d], w[d + 1]) + bn(w[d + 1])  # the projection shortcut
    for d in range(5):
        total += conv(3, w[5 - d], w[4 - d]) + bn(w[4 - d])
    return total + conv(3, w[0], classes)


def test_parameter_counts():
    assert _count(create_model("unet_mediatek")) == _by_hand(8, False) == 1_575_726
    assert _count(create_model("unet_mediatek_res12")) == _by_hand(12, True) == 3_642_522
    # The head is a 3x3 conv with a bias from c channels: 9c + 1 per class.
    assert _count(create_model("unet_mediatek", num_classes=7)) == 1_575_726 + 73
    # The table's other widths, same code.
    assert _count(MediaTekUNet(channels=5)) == _by_hand(5, False)


def test_encoder_and_decoder_widths():
    model = create_model("unet_mediatek")
    assert model.stem[0].out_channels == 8
    assert [stage[1][0].out_channels for stage in model.encoder] == [16, 32, 64, 128, 256]
    # Additive skips: each decoder conv reads only the deeper map (no concatenated skip channels).
    assert [(s.conv.in_channels, s.conv.out_channels) for s in model.decoder] == [
        (256, 128), (128, 64), (64, 32), (32, 16), (16, 8)
    ]  # fmt: skip
    assert model.head.out_channels == 6
    res = create_model("unet_mediatek_res12")
    assert all(isinstance(s, ResidualStage) for s in res.encoder) and res.stem[0].out_channels == 12


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_the_paper_size(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 192, 320))
    assert logits.shape == (1, 6, 192, 320) and torch.isfinite(logits).all()


def test_skip_is_added_before_batchnorm():
    """Decoder step = ReLU(BN(conv(x) + skip)), the public code's order."""
    torch.manual_seed(0)
    step = randomise_batchnorm(create_model("unet_mediatek"), size=(32, 32)).decoder[2]
    x, skip = torch.randn(1, 64, 8, 8), torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        want = torch.relu(step.bn(step.conv(x) + skip))
        assert torch.equal(step(x, skip), want)
        assert not torch.allclose(step(x, skip), torch.relu(step.bn(step.conv(x))) + skip)


@pytest.mark.parametrize("name", NAMES)
def test_deploy_form_is_a_unet_with_the_same_modules(name):
    model = create_model(name).eval()
    deployed = deploy_form(model)
    assert isinstance(deployed, MediaTekUNetDeploy)
    assert deployed.stem is model.stem and deployed.encoder is model.encoder and deployed.head is model.head
    assert all(d.conv is s.conv and d.bn is s.bn for d, s in zip(deployed.decoder, model.decoder))
    assert deployed.state_dict().keys() == model.state_dict().keys()


def test_deploy_form_equals_training_form_where_channels_equal_width():
    """32x48: the residual UNet's fourth decoder step has 24 channels at 16x24 (the onnx2tf case)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("unet_mediatek_res12"), size=(32, 48))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert (model(x) - deploy_form(model)(x)).abs().max().item() < 1e-5
    assert batchnorm_as_conv(torch.ones(1, 24, 16, 24), model.decoder[3].bn).shape == (1, 24, 16, 24)


class _TrainingForm(nn.Module):
    """The model as it trains, with no ``to_deploy`` for the chain to take."""

    def __init__(self, model):
        super().__init__()
        self.unet = model

    def forward(self, x):
        return self.unet(x)


@pytest.mark.chain
def test_decoder_batchnorm_rewrite_is_needed(tmp_path):
    """At 32x48 the residual UNet has a standalone BN over 24 channels at 16x24: exported as it
    trains and without the ONNX rewrites (which make any standalone BN a depthwise 1x1 conv),
    onnx2tf converts it wrong and the SavedModel gate names that BN; the deploy form
    passes every float gate with builtins only (average pool, nearest upsampling, additions)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("unet_mediatek_res12"), size=(32, 48))
    images = torch.rand(3, 3, 32, 48)  # 0..1, as divide-by-255 gives
    with pytest.raises(ParityError, match=r"saved_model.*decoder\.3\.bn"):
        convert_float32(_TrainingForm(model), images, tmp_path / "training_form", onnx_rewrites=False)
    result = convert_float32(model, images, tmp_path / "deploy_form")
    ops = result.ops["float32"]
    assert ops.non_builtin == [] and {"AVERAGE_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "ADD"} <= set(ops.counts)
    assert "CONCATENATION" not in ops.counts  # the skips are additions
    assert result.parity.stages["float32"].gate == "pass", result.table
