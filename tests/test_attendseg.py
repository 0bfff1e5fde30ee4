"""AttendSeg's own cases: the attention condenser as published, its size, odd condensed sizes, the
concatenation-free deploy form, the int8 gating.

Shapes, backward, the deploy form's function and weights, size refusal, checkpoints and the ONNX
export are ``ModelTester``'s (tests/models_base.py), run over every registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.models import create_model, deploy_form, get_model_config
from seg2tflite.models.attendseg import AttendSeg, AttentionCondenser

from model_helpers import randomise_batchnorm
from small_chain import convert_float32


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registered_config():
    config = get_model_config("attendseg")
    assert config.family == "attendseg"
    assert config.input_size == (360, 480) and config.num_classes == 11  # CamVid, as published
    assert config.size_divisor == 8 and all(v % 8 == 0 for v in config.input_size)


def test_parameter_count_meets_the_published_size():
    n = _count(create_model("attendseg"))
    assert n == 1_189_672
    assert abs(n - 1.19e6) / 1.19e6 < 0.005  # "1.19M parameters" (Wen et al., arXiv 2104.14623)
    assert _count(create_model("attendseg", num_classes=12)) == n + 49  # pointwise classifier from 48 channels


def test_built_from_condensers_and_depthwise_pointwise_convs():
    model = create_model("attendseg")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups == m.in_channels == m.out_channels and m.groups > 1]
    pointwise = [m for m in convs if m.kernel_size == (1, 1) and m.groups == 1]
    condensers = [m for m in model.modules() if isinstance(m, AttentionCondenser)]
    # 13 blocks (each: a condenser, a depthwise and a pointwise conv), 2 separable downsamplings, 2 fusions, the classifier
    assert len(condensers) == 13 and len(depthwise) == 13 + 2 and len(pointwise) == 13 + 13 + 2 + 2 + 1
    dense3x3 = [m for m in convs if m.kernel_size == (3, 3) and m.groups == 1]
    assert len(dense3x3) == 1  # the stem; everything else is depthwise, pointwise or grouped
    assert sorted({m.dilation[0] for m in depthwise}) == [1, 2, 4, 8]


@pytest.mark.parametrize("size", [(360, 480), (72, 120)])
def test_forward_where_the_condensers_pool_an_odd_size(size):
    """360x480 (the paper's) is 45x60 at stride 8, 72x120 is 9x15: the condensers there pool an odd size."""
    torch.manual_seed(0)
    model = create_model("attendseg").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 11, *size) and torch.isfinite(logits).all()


# ---------------------------------------------------------------- the attention condenser


def _condenser(channels=8, seed=0) -> AttentionCondenser:
    torch.manual_seed(seed)
    block = AttentionCondenser(channels, groups=2).eval()
    with torch.no_grad():
        block.scale.fill_(1.7)
    return block


@pytest.mark.parametrize("size", [(8, 12), (9, 15), (7, 8)])
def test_condenser_is_condense_embed_expand_sigmoid_scale(size):
    """V' = V * sigmoid(X(E(C(V)))) * S, with C a (ceil-mode) 2x2 max pool and X a nearest 2x upsampling."""
    block = _condenser()
    v = torch.randn(2, 8, *size)
    with torch.no_grad():
        q = F.max_pool2d(v, 2, ceil_mode=True)  # Q = C(V)
        k = block.embed(q)  # K = E(Q)
        a = k.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., : size[0], : size[1]]  # A = X(K)
        want = v * torch.sigmoid(a) * 1.7  # F(V, A, S)
        assert torch.allclose(block(v), want, atol=1e-6)


def test_sigmoid_attention_scales_the_input():
    """With a constant attention logit b, every element of V is scaled by sigmoid(b) * S."""
    block = _condenser()
    with torch.no_grad():
        block.embed[2].weight.zero_()
        block.embed[2].bias.fill_(0.4)
        v = torch.randn(1, 8, 10, 14)
        assert torch.allclose(block(v), v * torch.sigmoid(torch.tensor(0.4)) * 1.7, atol=1e-6)


def test_embedding_is_grouped_then_pointwise_at_half_the_width():
    block = AttentionCondenser(32, groups=4)
    grouped, _, pointwise = block.embed
    assert (grouped.in_channels, grouped.out_channels, grouped.groups, grouped.kernel_size) == (32, 16, 4, (3, 3))
    assert (pointwise.in_channels, pointwise.out_channels, pointwise.kernel_size) == (16, 32, (1, 1))


def test_deploy_form_fuses_without_concatenation(monkeypatch):
    """Same modules, no ``torch.cat``; that it is the same function is ``ModelTester``'s deploy-form test."""
    torch.manual_seed(0)
    model = create_model("attendseg").eval()
    deployed = deploy_form(model)
    assert deployed is not model and deployed.fuse4 is model.fuse4 and deployed.fuse2 is model.fuse2
    concatenated = []
    cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda tensors, *a, **k: concatenated.append(len(tensors)) or cat(tensors, *a, **k))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(x)
        assert concatenated == [2, 2]  # the two fusions of the training form
        deployed(x)
    assert concatenated == [2, 2]


# ---------------------------------------------------------------- chain


def _narrow() -> AttendSeg:
    torch.manual_seed(0)
    model = AttendSeg(num_classes=5, widths=(8, 8, 16, 16), decoder_widths=(16, 8), dilations=(1, 2))
    return randomise_batchnorm(model, size=(24, 40))


@pytest.mark.chain
def test_odd_condensed_sizes_convert_to_builtins(tmp_path):
    """24x40 is 3x5 at stride 8: the repeated row/column and the crop reach builtins, float gates pass."""
    images = torch.randn(3, 3, 24, 40)
    result = convert_float32(_narrow(), images, tmp_path)
    ops = result.ops["float32"]
    assert ops.non_builtin == []
    assert {"MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC", "MUL", "DEPTHWISE_CONV_2D", "STRIDED_SLICE"} <= set(ops.counts)
    assert result.parity.stages["float32"].gate == "pass", result.table


class _Gate(nn.Module):
    """A conv, then one attention condenser whose logits spread over the sigmoid's range."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Conv2d(3, 16, 3, padding=1)
        self.attend = AttentionCondenser(16)
        with torch.no_grad():
            self.attend.scale.fill_(1.5)
            self.attend.embed[2].weight.mul_(4)

    def forward(self, x):
        return self.attend(self.pre(x))


@pytest.mark.chain
def test_full_int8_gating_is_accurate_under_xnnpack(tmp_path):
    """The gating path in full int8: LOGISTIC and the MULs run inside XNNPACK, and with XNNPACK as
    on LiteRT's builtin kernels the output stays within two int8 steps of PyTorch's float output
    on the calibration images (no clipping there), with a mean error of rounding size (measured:
    1.55 and 1.48 steps at most, 0.32 on average for both; the two disagree by one step on 0.3%
    of the elements)."""
    from seg2tflite.calibration import calibration_from_array
    from seg2tflite.converters import ConvertConfig, convert_model
    from seg2tflite.converters.runtimes import TFLiteRunner

    model = _Gate().eval()
    images = (torch.rand(16, 3, 24, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1).numpy()
    with torch.no_grad():
        v = model.pre(torch.from_numpy(images))
        attention = torch.sigmoid(model.attend.embed(model.attend.condense(v)))
    assert attention.min() < 0.3 and attention.max() > 0.7  # the sigmoid is exercised, not saturated or flat
    # min/max ranges: every calibration value inside its tensor's range, so any error is the int8 arithmetic's
    config = ConvertConfig(
        input_size=(24, 40), variants=("float32", "full_int8"), parity_images=16, calib_size=16, calib_min=1, int8_ranges="minmax"
    )
    result = convert_model(model, tmp_path, config, calibration_from_array(images, "gate", min_size=1), log=None, progress=False)
    assert result.ops["full_int8"].float_ops == [] and result.ops["full_int8"].non_builtin == []
    path = tmp_path / "model_full_int8.tflite"
    xnnpack, builtin = TFLiteRunner(path), TFLiteRunner(path, xnnpack=False)
    delegation = xnnpack.delegation
    print(f"XNNPACK takes {delegation['delegated']} of {delegation['ops']} ops; not {delegation['not_delegated']}")
    assert delegation["delegate"] == "xnnpack"
    assert "LOGISTIC" not in delegation["not_delegated"] and "MUL" not in delegation["not_delegated"]
    assert result.ops["full_int8"].counts["LOGISTIC"] == 1 and result.ops["full_int8"].counts["MUL"] >= 1
    step = xnnpack.io_quantization["output"]["scale"]
    y_xnnpack = np.concatenate([xnnpack(images[i : i + 1]) for i in range(len(images))])
    y_builtin = np.concatenate([builtin(images[i : i + 1]) for i in range(len(images))])
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    for y in (y_xnnpack, y_builtin):
        error = np.abs(y - reference) / step
        assert error.max() <= 2 and error.mean() <= 0.5
