"""Foreign model outputs: a tensor, a tuple, a dict (torchvision), a ModelOutput (Hugging Face).

``converters.outputs`` finds the logits and, when asked, resizes low-resolution ones to the input
size; the same wrapper is exported and used as the PyTorch reference. Without it torchvision's
dict reached parity as a dict (``AttributeError: 'collections.OrderedDict' object has no
attribute 'float'``) and Hugging Face's 1/4-resolution logits were refused with no way forward.
"""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.converters import ConvertConfig, convert_model
from seg2tflite.converters.outputs import LogitsAdapter, adapt_outputs, choose_output, find_logits
from seg2tflite.errors import UserError

from model_helpers import batchnorm_from_images

SIZE = (64, 64)


class Returns(nn.Module):
    """A 1x1 conv whose logits come back wrapped by ``wrap``, at ``scale`` of the input size."""

    def __init__(self, wrap, scale=1):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 1)
        self.wrap, self.scale = wrap, scale

    def forward(self, x):
        y = self.head(F.avg_pool2d(x, self.scale) if self.scale > 1 else x)
        return self.wrap(y)


def test_find_logits_in_every_shape_of_output():
    t = torch.zeros(1, 4, 8, 8)
    assert find_logits(t) == ("tensor", None)
    assert find_logits((t, t)) == ("tuple[0]", None)
    assert find_logits(OrderedDict(out=t, aux=t)) == ("dict['out']", "out")
    assert find_logits({"seg": t}) == ("dict['seg']", "seg")
    assert find_logits(SimpleNamespace(logits=t, hidden_states=None)) == (".logits", "logits")
    assert find_logits({"a": t, "b": t}, key="b") == ("dict['b']", "b")
    with pytest.raises(UserError, match=r"output_key="):
        find_logits({"a": t, "b": t})
    with pytest.raises(UserError, match=r"no tensor under that name"):
        find_logits({"a": t}, key="b")
    with pytest.raises(UserError, match="expected logits"):
        find_logits("text")


def test_hugging_face_model_output_is_read_by_its_logits():
    from transformers.modeling_outputs import SemanticSegmenterOutput

    t = torch.zeros(1, 4, 8, 8)
    assert find_logits(SemanticSegmenterOutput(loss=None, logits=t)) == ("dict['logits']", "logits")


def test_low_resolution_logits_are_refused_with_the_way_forward_and_upsampled_on_request():
    model = Returns(lambda y: {"logits": y}, scale=4).eval()
    with pytest.raises(UserError, match=r"16x16 for a 64x64 input; pass upsample_logits=True"):
        choose_output(model, SIZE)
    reference, deploy, choice = adapt_outputs(model, model, SIZE, upsample=True)
    assert reference is deploy and isinstance(deploy, LogitsAdapter)
    assert choice.to_dict() == {"selected": "dict['logits']", "logits_size": [16, 16], "upsampled_to_input": True}
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = F.interpolate(model(x)["logits"], size=SIZE, mode="bilinear", align_corners=False)
        assert torch.equal(deploy(x), expected)


def test_a_plain_tensor_model_is_not_wrapped():
    model = Returns(lambda y: y).eval()
    reference, deploy, choice = adapt_outputs(model, model, SIZE)
    assert reference is model and deploy is model and choice.path == "tensor"


def _images(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


def _float32(images):
    return ConvertConfig(input_size=SIZE, variants=("float32",), parity_images=len(images), calib_min=1)


@pytest.mark.chain
def test_torchvision_dict_output_converts(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=8)
    images = _images()
    batchnorm_from_images(model, images)
    spec = "synthetic:size=64,train=8,val=8"  # data given as a spec string, as on the command line
    result = convert_model(model, tmp_path, _float32(images), spec, spec, log=None, progress=False)
    assert result.manifest["parity"]["source"] == "synthetic:val"
    assert result.manifest["model"]["output"]["selected"] == "dict['out']"
    assert result.manifest["model"]["class"].endswith("LRASPP")
    assert result.parity.failures == []
    assert result.parity.stages["float32"].vs_pytorch["argmax_agreement"] >= 0.9999


def small_hf_segformer(num_labels=8):
    """Two stages; 24 channels on the 16x16 first stage at 64x64 (16 would equal the map's size, which
    onnx2tf mislays in SegFormer's tokens -> (B, H, W, C) -> permute: a separate problem)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[24, 32], patch_sizes=[7, 3], strides=[4, 2],
        num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=num_labels,
    )  # fmt: skip
    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(config).eval()


@pytest.mark.chain
def test_hugging_face_segformer_low_resolution_logits_upsampled(tmp_path):
    model = small_hf_segformer()
    images = _images()
    config = ConvertConfig(input_size=SIZE, variants=("float32",), parity_images=8, calib_min=1, upsample_logits=True)
    result = convert_model(model, tmp_path, config, images, log=None, progress=False)  # a plain array of images
    assert result.manifest["model"]["output"] == {
        "selected": "dict['logits']",
        "logits_size": [16, 16],
        "upsampled_to_input": True,
    }
    assert result.manifest["config"]["upsample_logits"] is True
    assert result.parity.failures == []
    assert result.parity.stages["float32"].vs_pytorch["argmax_agreement"] >= 0.9999
