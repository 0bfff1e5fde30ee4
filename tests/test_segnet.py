"""SegNet-VGG16's own cases: parameter counts, index-free unpooling and its ties, the deploy form's ops.

Shapes, backward, the deploy form's function and weights, size refusal, checkpoints and the ONNX
export are ``ModelTester``'s (tests/models_base.py), run over every registered model."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg2tflite.models import create_model, deploy_form, get_model_config, integer_form
from seg2tflite.models.segnet import (
    SMALLEST_CHANNEL_SHARE,
    SegNet,
    SegNetDeploy,
    SegNetEqualized,
    depth_to_space,
    pre_pool_maxima,
    unpool_first_max,
)

from model_helpers import randomise_batchnorm
from small_chain import convert_float32

NUM_CLASSES = 5


def _tie_image(size, seed=0) -> torch.Tensor:
    """Few distinct values: equal neighbours, so equal window maxima, from the first layer on."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (1, 3, *size), generator=g).float()


def _naive_unpool(values, pooled, before_pool):
    """Unpooling by equality alone: every position equal to the maximum gets the value."""
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    return up(values) * (before_pool == up(pooled)).to(values.dtype)


class _NaiveDeploy(SegNetDeploy):
    def _unpool(self, x, context):
        pooled, before_pool = context
        return _naive_unpool(x, pooled, before_pool)


@pytest.fixture(scope="module")
def segnet():
    torch.manual_seed(0)
    return randomise_batchnorm(create_model("segnet_vgg16", num_classes=NUM_CLASSES)).eval()


def _tiny(num_classes=4):
    torch.manual_seed(0)
    return randomise_batchnorm(SegNet(num_classes=num_classes, stages=((1, 8), (2, 16)))).eval()


# ---------------------------------------------------------------- config, shapes, sizes


def test_registered_config():
    config = get_model_config("segnet_vgg16")
    assert config.family == "segnet"
    assert config.input_size == (352, 480)
    assert config.num_classes == 11
    assert config.size_divisor == 32
    assert all(v % config.size_divisor == 0 for v in config.input_size)


def test_parameter_counts():
    model = create_model("segnet_vgg16")
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    assert count(model.parameters()) == 29_449_355  # 11 classes
    assert count(model.encoder.parameters()) == 14_723_136  # with BN's 8,448 scales and shifts
    vgg16_convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(vgg16_convs) == 13 and count(p for m in vgg16_convs for p in m.parameters()) == 14_714_688
    # The last conv is 3x3 from 64 channels with a bias: 577 parameters per class.
    assert count(create_model("segnet_vgg16", num_classes=12).parameters()) == 29_449_355 + 577


# ---------------------------------------------------------------- unpooling without indices


def test_pytorch_max_pool_records_the_first_maximum_on_ties():
    """The deploy form's tie rule rests on this: every 0/1 pattern of a 2x2 window."""
    for bits in itertools.product((0.0, 1.0), repeat=4):
        window = torch.tensor(bits).reshape(1, 1, 2, 2)
        _, index = F.max_pool2d(window, 2, 2, return_indices=True)
        assert index.item() == bits.index(max(bits)), bits


def test_depth_to_space_places_channel_groups_by_window_offset():
    x = torch.arange(2 * 12 * 3 * 5, dtype=torch.float32).reshape(2, 4 * 3, 3, 5)  # 4 offsets x C=3
    y = depth_to_space(x, 2)
    assert y.shape == (2, 3, 6, 10)
    for i, j in itertools.product((0, 1), repeat=2):
        k = i * 2 + j
        assert torch.equal(y[:, :, i::2, j::2], x[:, k * 3 : (k + 1) * 3])


@pytest.mark.parametrize("kind", ["few_values", "relu", "constant", "continuous"])
def test_unpool_first_max_equals_max_unpool(kind):
    g = torch.Generator().manual_seed(0)
    shape = (2, 6, 8, 12)
    before = {
        "few_values": lambda: torch.randint(0, 2, shape, generator=g).float(),
        "relu": lambda: torch.randn(shape, generator=g).relu(),
        "constant": lambda: torch.zeros(shape),
        "continuous": lambda: torch.randn(shape, generator=g),
    }[kind]()
    pooled, indices = F.max_pool2d(before, 2, 2, return_indices=True)
    values = torch.randn(pooled.shape, generator=g)
    assert torch.equal(unpool_first_max(values, pooled, before), F.max_unpool2d(values, indices, 2, 2))


def test_naive_unpool_is_wrong_exactly_on_ties():
    g = torch.Generator().manual_seed(0)
    continuous = torch.randn(2, 6, 8, 12, generator=g)
    tied = continuous.relu()
    for before, has_ties in ((continuous, False), (tied, True)):
        pooled, indices = F.max_pool2d(before, 2, 2, return_indices=True)
        values = torch.randn(pooled.shape, generator=g)
        exact = F.max_unpool2d(values, indices, 2, 2)
        assert torch.equal(_naive_unpool(values, pooled, before), exact) != has_ties


# ---------------------------------------------------------------- deploy form


def _encoder_ties(model: SegNet, x: torch.Tensor) -> int:
    """How many 2x2 pooling windows in the encoder hold more than one maximum."""
    ties = 0
    with torch.no_grad():
        for stage in model.encoder:
            x = stage(x)
            pooled = F.max_pool2d(x, 2, 2)
            hits = sum((x[:, :, i::2, j::2] == pooled).int() for i in (0, 1) for j in (0, 1))
            ties += int((hits > 1).sum())
            x = pooled
    return ties


def test_deploy_form_is_segnet_with_the_same_modules(segnet):
    deployed = deploy_form(segnet)
    assert isinstance(deployed, SegNetDeploy)
    assert deployed.encoder is segnet.encoder and deployed.decoder is segnet.decoder
    assert deployed.state_dict().keys() == segnet.state_dict().keys()


def test_random_inputs_tie_in_the_encoder(segnet):
    """ReLU zeros tie even on random input: the first-maximum rule is needed on every image."""
    assert _encoder_ties(segnet, torch.randn(1, 3, 64, 64)) > 1000


def test_deploy_form_equals_training_form_on_tied_inputs(segnet):
    x = _tie_image((64, 64))
    assert _encoder_ties(segnet, x) > 1000
    with torch.no_grad():
        difference = (segnet(x) - deploy_form(segnet)(x)).abs().max().item()
    assert difference < 1e-5


def test_naive_deploy_form_differs_on_ties(segnet):
    """Without the first-maximum rule the deploy form would be wrong on ordinary inputs."""
    x = _tie_image((32, 64))
    with torch.no_grad():
        reference = segnet(x)
        naive = _NaiveDeploy(segnet)(x)
        exact = deploy_form(segnet)(x)
    assert (reference - exact).abs().max().item() < 1e-5
    assert (reference - naive).abs().max().item() > 1e-2 * (reference.max() - reference.min()).item()


def _uneven(model: SegNet) -> SegNet:
    """Each pre-pool map's channels spread over two decades of range, as trained maps are."""
    with torch.no_grad():
        for stage in model.encoder:
            norm = stage[-1][1]
            spread = torch.logspace(-2, 0, norm.num_features)
            norm.weight.mul_(spread)
            norm.bias.mul_(spread)
    return model


def _positions_off_on_8_bits(model: SegNet, images: torch.Tensor) -> int:
    """Pooling windows whose first maximum moves when the pre-pool map is put on 256 levels over
    [0, its maximum]: the positions full int8's unpooling reads."""
    moved = 0
    with torch.no_grad():
        x = images
        for stage in model.encoder:
            x = stage(x)
            on_grid = torch.round(x / (x.max() / 255)) * (x.max() / 255)
            _, exact = F.max_pool2d(x, 2, 2, return_indices=True)
            _, rounded = F.max_pool2d(on_grid, 2, 2, return_indices=True)
            moved += int((rounded != exact).sum())
            x = F.max_pool2d(x, 2, 2)
    return moved


def test_integer_form_is_the_same_function_with_one_range_per_pre_pool_map():
    model = _uneven(_tiny())
    images = torch.randn(4, 3, 32, 48)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert integer_form(model) is None  # without calibration images there is nothing to fit
    equalized = integer_form(model, calibration=images)
    assert isinstance(equalized, SegNetEqualized) and equalized.to_deploy(integer=True, calibration=images) is equalized
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())  # the trained model untouched
    for before, after in zip(pre_pool_maxima(model, images), pre_pool_maxima(equalized, images)):
        resolved = before > before.max() * SMALLEST_CHANNEL_SHARE  # the others are scaled by the largest factor
        assert resolved.sum() >= len(before) - 1
        assert torch.allclose(after[resolved], after.max().expand(int(resolved.sum())), rtol=1e-5)
    with torch.no_grad():
        for x in (images, torch.randn(2, 3, 32, 48), _tie_image((32, 48))):
            reference_logits = model(x)
            scale = reference_logits.abs().max()
            assert (equalized(x) - reference_logits).abs().max() <= 1e-4 * scale


def test_integer_form_keeps_unpooling_positions_on_8_bits():
    """Channels that reach a fraction of the map's maximum tie on its int8 grid; equalized, far fewer do."""
    model = _uneven(_tiny())
    calibration, test = torch.randn(8, 3, 32, 48), torch.randn(8, 3, 32, 48)
    plain, equalized = (
        _positions_off_on_8_bits(model, test),
        _positions_off_on_8_bits(integer_form(model, calibration=calibration), test),
    )
    assert equalized < plain / 4, (plain, equalized)


# ---------------------------------------------------------------- export and conversion


def _export(model, x, path):
    torch.onnx.export(model, x, str(path), opset_version=17, dynamo=False, input_names=["input"], output_names=["logits"])


def test_deploy_form_exports_to_onnx_without_unpool(tmp_path):
    import onnx
    import onnxruntime as ort

    model = _tiny()
    x = _tie_image((32, 48))
    _export(model.to_deploy(), x, tmp_path / "tiny.onnx")
    graph = onnx.load(str(tmp_path / "tiny.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert "MaxUnpool" not in ops and ops["DepthToSpace"] == 2
    assert all(a.s == b"DCR" for n in graph.node if n.op_type == "DepthToSpace" for a in n.attribute if a.name == "mode")
    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    for sample in (x, _tie_image((32, 48), seed=1), torch.randn(1, 3, 32, 48)):
        with torch.no_grad():
            reference = model(sample).numpy()
        (logits,) = session.run(None, {"input": sample.numpy()})
        assert np.abs(logits - reference).max() < 1e-5


@pytest.mark.chain
def test_deploy_form_converts_to_tflite_builtins(tmp_path):
    """The chain on a two-stage SegNet: builtin ops only, float32 gates pass on tied inputs."""
    size = (32, 48)
    images = torch.cat([_tie_image(size, seed=1), _tie_image(size, seed=2), torch.randn(1, 3, *size)])
    result = convert_float32(_tiny(), images, tmp_path)
    ops = set(result.ops["float32"].counts)
    assert not any(op.startswith("Flex") for op in ops), ops
    assert {"DEPTH_TO_SPACE", "SELECT_V2", "EQUAL"} <= ops
    assert result.parity.stages["float32"].gate == "pass", result.table
